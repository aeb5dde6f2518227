use super::*;

#[test]
fn reading_the_files_is_not_a_change() {
    use notify::event::{AccessKind, CreateKind, MetadataKind, ModifyKind};
    use notify::{Event, EventKind};
    let at = |kind| Event::new(kind).add_path(PathBuf::from("/k/dev.b64"));
    assert!(!is_change(&at(EventKind::Access(AccessKind::Any))));
    assert!(!is_change(&at(EventKind::Modify(ModifyKind::Metadata(
        MetadataKind::AccessTime
    )))));
    assert!(is_change(&at(EventKind::Create(CreateKind::File))));
    assert!(is_change(&at(EventKind::Modify(ModifyKind::Any))));
    let scratch =
        Event::new(EventKind::Create(CreateKind::File)).add_path(PathBuf::from("/k/.dev.b64.tmp"));
    assert!(!is_change(&scratch));
}

#[test]
fn scratch_files_are_the_atomic_drop_leftovers() {
    assert!(is_scratch(Path::new("/k/.new.json.tmp")));
    assert!(is_scratch(Path::new("/k/new.json.tmp")));
    assert!(is_scratch(Path::new("/k/.hidden")));
    assert!(!is_scratch(Path::new("/k/provider.json")));
    assert!(!is_scratch(Path::new("/k/revoked")));
}

#[test]
fn the_kubelets_data_swap_is_a_change() {
    use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};
    use notify::{Event, EventKind};
    let swap = Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
        .add_path(PathBuf::from("/k/..data_tmp"))
        .add_path(PathBuf::from("/k/..data"));
    assert!(is_change(&swap));
    let new_dir = Event::new(EventKind::Create(CreateKind::Folder))
        .add_path(PathBuf::from("/k/..2026_12_01_14_05_00.987654321"));
    assert!(is_change(&new_dir));
    let old_dir = Event::new(EventKind::Remove(RemoveKind::Folder))
        .add_path(PathBuf::from("/k/..2026_12_01_14_00_00.123456789"));
    assert!(is_change(&old_dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_key_file_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let keys_dir = dir.path().join("keys");
    let material = crate::firstrun::ensure_dev_material(&keys_dir).unwrap();
    let (keys, _) = KeyStore::open(&keys_dir).unwrap();
    let keys = Arc::new(keys);
    let certs = Arc::new(CertResolver::load(&material.server_cert, &material.server_key).unwrap());
    let reloader = Arc::new(Reloader::new(
        Arc::clone(&keys),
        certs,
        TlsPaths {
            cert: material.server_cert.clone(),
            key: material.server_key.clone(),
            client_ca: None,
            client_auth: crate::config::ClientAuth::Optional,
        },
        Arc::default(),
        Policy::from_config(&crate::config::Config::defaults(&keys_dir).auth),
    ));
    let mut reloads = reloader.subscribe();
    let task = watch_files(Arc::clone(&reloader)).unwrap();
    std::fs::write(
        keys_dir.join("new.b64"),
        "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0\n",
    )
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), reloads.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(keys.snapshot().get("new").is_some());
    task.abort();
}
