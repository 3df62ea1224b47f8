//! Calls a user, prints what happens, and hangs up after a few seconds in
//! the call (or when the other side does).
//!
//! ```sh
//! cargo run -p calling-facade --features dev --example answer -- bob      # in one terminal
//! cargo run -p calling-facade --features dev --example call -- alice bob  # in another
//! ```

#![allow(clippy::print_stdout)]

use std::time::Duration;

use calling_facade::dev::DevServer;
use calling_facade::{CallType, CallingEvent, TRTCCalling};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let me = args.next().unwrap_or_else(|| "alice".into());
    let callee = args.next().unwrap_or_else(|| "bob".into());
    let server =
        DevServer::from_data_dir(args.next().unwrap_or_else(|| "opencalling-data".into()))?;

    let calling = TRTCCalling::new(server.options());
    let mut events = calling.events();
    calling
        .login(server.sdk_app_id, &me, &server.user_sig(&me)?)
        .await?;
    calling.call(&callee, CallType::Audio).await?;
    println!("{me} calls {callee}");
    let mut hang_up_at = None;
    loop {
        let deadline =
            hang_up_at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                if !matches!(event, CallingEvent::UserVoiceVolume { .. }) {
                    println!("{me}: {event}");
                }
                match event {
                    CallingEvent::UserEnter { .. } => {
                        hang_up_at = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                    }
                    CallingEvent::CallEnd => break,
                    _ => {}
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                calling.hangup().await?;
                hang_up_at = None;
            }
        }
    }
    calling.shutdown().await;
    Ok(())
}
