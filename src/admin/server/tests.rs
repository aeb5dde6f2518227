use std::os::unix::fs::PermissionsExt;

use super::*;

#[tokio::test]
async fn the_socket_gets_its_mode_and_is_removed_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run").join("admin.sock");
    let socket = AdminSocket::bind(&path).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, SOCKET_MODE);
    assert!(!dir.path().join("run/admin.sock.new").exists());
    drop(socket);
    assert!(!path.exists());
}

#[tokio::test]
async fn a_live_socket_is_not_taken_and_a_stale_one_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    let first = AdminSocket::bind(&path).unwrap();
    assert!(matches!(AdminSocket::bind(&path), Err(BindError::InUse(_))));
    drop(first);
    // A gateway killed with SIGKILL leaves its socket file behind, with
    // nobody listening.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let replaced = AdminSocket::bind(&stale);
    assert!(replaced.is_ok(), "{replaced:?}");
}

#[tokio::test]
async fn a_file_that_is_not_a_socket_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    std::fs::write(&path, "notes").unwrap();
    assert!(matches!(
        AdminSocket::bind(&path),
        Err(BindError::NotASocket(_))
    ));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "notes");
}

#[tokio::test]
async fn a_successors_socket_is_not_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    let old = AdminSocket::bind(&path).unwrap();
    // A new gateway's socket took the name (after the old one stopped
    // answering, say); the old one's drop must not remove it.
    std::fs::remove_file(&path).unwrap();
    let new = AdminSocket::bind(&path).unwrap();
    drop(old);
    assert!(path.exists());
    drop(new);
}
