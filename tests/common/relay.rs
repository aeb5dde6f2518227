//! A TCP relay between a bridge and its remote broker that can be switched
//! off: "the uplink is down". Connections through it are cut and new ones
//! closed at once, while the broker behind it, and the test's own clients
//! on it, stay up.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How a slow relay carries the gateway-to-remote direction: at most
/// `chunk` bytes every `pause`, a remote that reads slowly.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub chunk: usize,
    pub pause: Duration,
}

/// A TCP relay to `target` that can be switched off: "the remote is down".
pub struct Relay {
    pub port: u16,
    up: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// A relay to `127.0.0.1:target`, up or down to begin with.
    pub async fn start(target: u16, up: bool) -> Relay {
        Relay::start_paced(target, up, None).await
    }

    /// As [`Relay::start`], the gateway-to-remote direction carried at
    /// `pace` when given. Cut, it drops both sockets and what they held.
    pub async fn start_paced(target: u16, up: bool, pace: Option<Pace>) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let port = listener.local_addr().expect("relay address").port();
        let (up, state) = watch::channel(up);
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if !*state.borrow() {
                    // Down: the connection is closed at once.
                    continue;
                }
                let mut state = state.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    // As the two ends would without the relay: no Nagle
                    // delay on small packets such as acks.
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    tokio::select! {
                        () = relay(inbound, outbound, pace) => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Relay { port, up, task }
    }

    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Carries one connection until either end closes.
async fn relay(inbound: TcpStream, outbound: TcpStream, pace: Option<Pace>) {
    let Some(pace) = pace else {
        let (mut a, mut b) = (inbound, outbound);
        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
        return;
    };
    let (mut from_gateway, mut to_gateway) = inbound.into_split();
    let (mut from_remote, mut to_remote) = outbound.into_split();
    let slowly_up = async {
        let mut chunk = vec![0u8; pace.chunk];
        loop {
            let n = match from_gateway.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if to_remote.write_all(&chunk[..n]).await.is_err() {
                return;
            }
            tokio::time::sleep(pace.pause).await;
        }
    };
    let down = async {
        let _ = tokio::io::copy(&mut from_remote, &mut to_gateway).await;
    };
    tokio::join!(slowly_up, down);
}
