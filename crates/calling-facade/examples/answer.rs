//! Answers every call to one user and prints what happens, until Ctrl-C.
//!
//! ```sh
//! cargo run -p calling-server                      # a development server, in another terminal
//! cargo run -p calling-facade --features dev --example answer -- bob
//! ```
//!
//! The server's data directory (`./opencalling-data`, or the second
//! argument) tells the example where the server is and signs a test UserSig.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use calling_facade::dev::DevServer;
use calling_facade::{CallingEvent, TRTCCalling};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let me = args.next().unwrap_or_else(|| "bob".into());
    let server =
        DevServer::from_data_dir(args.next().unwrap_or_else(|| "opencalling-data".into()))?;

    let calling = TRTCCalling::new(server.options());
    // The event stream: no listener to keep alive, no reference cycle.
    let mut events = calling.events();
    calling
        .login(server.sdk_app_id, &me, &server.user_sig(&me)?)
        .await?;
    println!("{me} is waiting for calls (Ctrl-C to stop)");
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                println!("{me}: {event}");
                if let CallingEvent::Invited { .. } = event
                    && let Err(error) = calling.accept().await {
                        eprintln!("accept failed: {error}");
                    }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // Logs out and waits until the server knows: the caller hears it at once.
    calling.shutdown().await;
    Ok(())
}
