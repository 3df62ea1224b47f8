//! A test bot: answers the first call, plays a WAV file into it, records
//! what it hears into another, and hangs up after a number of seconds.
//!
//! ```sh
//! cargo run -p calling-facade --features dev --example bot -- \
//!     bot tests/fixtures/speech/speech-a-16k.wav target/bot-heard.wav 10
//! cargo run -p calling-facade --features dev --example call -- alice bot
//! ```

#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Duration;

use calling_facade::dev::DevServer;
use calling_facade::{AudioDevices, CallingEvent, CaptureDevice, PlaybackDevice, TRTCCalling};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let me = args.next().unwrap_or_else(|| "bot".into());
    let play = PathBuf::from(
        args.next()
            .ok_or("usage: bot NAME PLAY.wav RECORD.wav [SECONDS] [DATA_DIR]")?,
    );
    let record = PathBuf::from(
        args.next()
            .ok_or("usage: bot NAME PLAY.wav RECORD.wav [SECONDS] [DATA_DIR]")?,
    );
    let seconds: u64 = args.next().map_or(Ok(10), |text| text.parse())?;
    let server =
        DevServer::from_data_dir(args.next().unwrap_or_else(|| "opencalling-data".into()))?;

    let mut options = server.options();
    options.audio = AudioDevices {
        capture: CaptureDevice::Wav {
            path: play,
            looping: true,
        },
        playback: PlaybackDevice::Wav {
            path: record.clone(),
        },
    };
    let calling = TRTCCalling::new(options);
    let mut events = calling.events();
    calling
        .login(server.sdk_app_id, &me, &server.user_sig(&me)?)
        .await?;
    println!("{me} is waiting for a call");
    while let Some(event) = events.recv().await {
        match event {
            CallingEvent::Invited { sponsor, .. } => {
                println!("{me}: answering {sponsor}");
                calling.accept().await?;
                break;
            }
            other => println!("{me}: {other}"),
        }
    }
    let hang_up = tokio::time::sleep(Duration::from_secs(seconds));
    tokio::pin!(hang_up);
    let mut hung_up = false;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(CallingEvent::CallEnd) | None => break,
                Some(CallingEvent::UserVoiceVolume { .. }) => {}
                Some(event) => println!("{me}: {event}"),
            },
            () = &mut hang_up, if !hung_up => {
                calling.hangup().await?;
                hung_up = true;
            }
        }
    }
    calling.shutdown().await;
    println!("{me}: recorded what it heard in {}", record.display());
    Ok(())
}
