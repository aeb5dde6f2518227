use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::mqtt::Version;

fn wire(stream: tokio::io::DuplexStream) -> Wire<tokio::io::DuplexStream> {
    let codec = Codec::new(Version::V5, 64 * 1024);
    Wire::new(stream, codec, BytesMut::new(), Traffic::default())
}

#[tokio::test]
async fn a_quiet_wire_holds_no_buffer_either_way() {
    let (mut device, gateway) = tokio::io::duplex(64 * 1024);
    let mut wire = wire(gateway);
    device.write_all(b"0123456789").await.expect("device write");
    assert!(matches!(wire.progress(true).await, Progress::Read));
    assert_eq!(&wire.input[..], b"0123456789");
    // The client layer takes the packets; then the wait for the next one.
    wire.input.clear();
    let waited = tokio::time::timeout(Duration::from_millis(50), wire.progress(true)).await;
    assert!(waited.is_err(), "nothing came");
    assert_eq!(wire.input.capacity(), 0, "input kept while quiet");

    wire.output
        .queue_with(|out| out.extend_from_slice(&[7; 3000]));
    while wire.wants_write() {
        wire.progress(false).await;
    }
    assert_eq!(wire.output.bytes.capacity(), 0, "output kept once written");
    let mut got = vec![0u8; 3000];
    device.read_exact(&mut got).await.expect("device read");
}

#[tokio::test]
async fn a_client_that_fills_its_reads_is_read_in_growing_chunks() {
    let (mut device, gateway) = tokio::io::duplex(256 * 1024);
    let mut wire = wire(gateway);
    device
        .write_all(&[1; 100 * 1024])
        .await
        .expect("device write");
    let mut reads = 0;
    while wire.input.len() < 100 * 1024 {
        assert!(matches!(wire.progress(true).await, Progress::Read));
        reads += 1;
    }
    // 1 + 2 + 4 + 8 + 16 + 32 + 32 KiB: not a hundred 1 KiB reads.
    assert!(reads <= 8, "{reads} reads for 100 KiB");
}
