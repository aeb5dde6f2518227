//! A TCP relay between a bridge and its remote broker that can be switched
//! off: "the uplink is down". Connections through it are cut and new ones
//! closed at once, while the broker behind it, and the test's own clients
//! on it, stay up.

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP relay to `target` that can be switched off: "the remote is down".
pub struct Relay {
    pub port: u16,
    up: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// A relay to `127.0.0.1:target`, up or down to begin with.
    pub async fn start(target: u16, up: bool) -> Relay {
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
                    let (mut a, mut b) = (inbound, outbound);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
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
