//! The layer store on a real filesystem: blobs, verified unpack of each compression, concurrent
//! unpack of one layer, GC of unshared layers, crash leftovers.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::Path;

use imc_api::{Digest, Reference};
use imc_layers::{BlobCompression, ImageRecord, LayerError, LayerRecord, LayerStore};

fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).unwrap();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn compress(tar: &[u8], c: BlobCompression) -> Vec<u8> {
    match c {
        BlobCompression::None => tar.to_vec(),
        BlobCompression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        BlobCompression::Zstd => zstd::encode_all(tar, 3).unwrap(),
    }
}

/// Puts `blob` into the store the way the puller does: temp file, then commit.
fn put_blob(store: &LayerStore, blob: &[u8]) -> Digest {
    let digest = Digest::of(blob);
    let tmp = store.temp_path();
    fs::write(&tmp, blob).unwrap();
    store.commit_blob(&tmp, &digest).unwrap();
    digest
}

fn dir_names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn unpacks_each_compression_and_verifies_diff_id() {
    let d = tempfile::tempdir().unwrap();
    let store = LayerStore::open(d.path()).unwrap();
    for (i, c) in [
        BlobCompression::None,
        BlobCompression::Gzip,
        BlobCompression::Zstd,
    ]
    .into_iter()
    .enumerate()
    {
        let content = format!("content {i}");
        let tar = layer_tar(&[("f", content.as_bytes())]);
        let diff_id = Digest::of(&tar);
        let blob = put_blob(&store, &compress(&tar, c));
        assert_eq!(fs::read(store.blob_path(&blob)).unwrap(), compress(&tar, c));
        let (size, created) = store.unpack_blob("img", &blob, c, &diff_id).unwrap();
        assert!(created);
        assert_eq!(size, content.len() as u64);
        assert!(store.has_layer(&diff_id));
        assert_eq!(
            fs::read(store.layer_path(&diff_id).join("f")).unwrap(),
            content.as_bytes()
        );
        // Second time: already there.
        let (_, created) = store.unpack_blob("img", &blob, c, &diff_id).unwrap();
        assert!(!created);
    }
    assert!(dir_names(&d.path().join("tmp")).is_empty());
}

#[test]
fn diff_id_mismatch_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let store = LayerStore::open(d.path()).unwrap();
    let tar = layer_tar(&[("f", b"x")]);
    let blob = put_blob(&store, &compress(&tar, BlobCompression::Gzip));
    let claimed = Digest::of(b"something else");
    let err = store
        .unpack_blob("example.com/app:1", &blob, BlobCompression::Gzip, &claimed)
        .unwrap_err();
    assert!(matches!(err, LayerError::DiffIdMismatch { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("example.com/app:1")
            && msg.contains(&blob.to_string())
            && msg.contains(&claimed.to_string()),
        "{msg}"
    );
    assert!(dir_names(&d.path().join("layers/sha256")).is_empty());
    assert!(dir_names(&d.path().join("tmp")).is_empty());
}

#[test]
fn hostile_layer_error_names_image_layer_and_entry_and_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let store = LayerStore::open(d.path()).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_path("shadow").unwrap();
    h.set_link_name("/etc/shadow").unwrap();
    h.set_size(0);
    h.set_cksum();
    b.append(&h, &[][..]).unwrap();
    let tar = b.into_inner().unwrap();
    let blob = put_blob(&store, &tar);
    let err = store
        .unpack_blob(
            "example.com/evil:1",
            &blob,
            BlobCompression::None,
            &Digest::of(&tar),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("example.com/evil:1")
            && err.contains(&blob.to_string())
            && err.contains("\"shadow\""),
        "{err}"
    );
    assert!(dir_names(&d.path().join("layers/sha256")).is_empty());
    assert!(dir_names(&d.path().join("tmp")).is_empty());
}

#[test]
fn concurrent_unpack_of_one_layer_keeps_one_copy() {
    let d = tempfile::tempdir().unwrap();
    let store = LayerStore::open(d.path()).unwrap();
    let big = vec![7u8; 4 << 20];
    let tar = layer_tar(&[("a", &big), ("b", &big)]);
    let diff_id = Digest::of(&tar);
    let blob = put_blob(&store, &compress(&tar, BlobCompression::Zstd));
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (store, blob, diff_id) = (store.clone(), blob.clone(), diff_id.clone());
                s.spawn(move || store.unpack_blob("img", &blob, BlobCompression::Zstd, &diff_id))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created = results
        .iter()
        .filter(|r| matches!(r, Ok((_, true))))
        .count();
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(created, 1);
    assert_eq!(
        dir_names(&d.path().join("layers/sha256")),
        vec![diff_id.hex().to_owned()]
    );
    assert!(dir_names(&d.path().join("tmp")).is_empty());
}

fn record(reference: &str, layers: &[(&Digest, &Digest)], config: &Digest) -> ImageRecord {
    ImageRecord {
        reference: reference.to_owned(),
        manifest_digest: Digest::of(reference.as_bytes()),
        config_digest: config.clone(),
        config: serde_json::json!({}),
        layers: layers
            .iter()
            .map(|(b, d)| LayerRecord {
                digest: (*b).clone(),
                diff_id: (*d).clone(),
                size: 1,
                unpacked_size: 1,
            })
            .collect(),
        pulled_at: "2026-01-01T00:00:00Z".to_owned(),
    }
}

#[test]
fn remove_image_collects_unshared_layers_only() {
    let d = tempfile::tempdir().unwrap();
    let store = LayerStore::open(d.path()).unwrap();
    let mut layers = Vec::new();
    for name in ["shared", "only-a", "only-b"] {
        let tar = layer_tar(&[(name, name.as_bytes())]);
        let blob = put_blob(&store, &tar);
        let diff_id = Digest::of(&tar);
        store
            .unpack_blob("img", &blob, BlobCompression::None, &diff_id)
            .unwrap();
        layers.push((blob, diff_id));
    }
    let cfg_a = Digest::of(b"{\"a\":1}");
    let cfg_b = Digest::of(b"{\"b\":1}");
    store.put_blob_bytes(&cfg_a, b"{\"a\":1}").unwrap();
    store.put_blob_bytes(&cfg_b, b"{\"b\":1}").unwrap();
    let a: Reference = "example.com/a:1".parse().unwrap();
    let b: Reference = "example.com/b:1".parse().unwrap();
    store
        .put_image(&record(
            &a.to_string(),
            &[(&layers[0].0, &layers[0].1), (&layers[1].0, &layers[1].1)],
            &cfg_a,
        ))
        .unwrap();
    store
        .put_image(&record(
            &b.to_string(),
            &[(&layers[0].0, &layers[0].1), (&layers[2].0, &layers[2].1)],
            &cfg_b,
        ))
        .unwrap();
    assert_eq!(store.images().unwrap().len(), 2);
    assert_eq!(store.image(&a).unwrap().unwrap().reference, a.to_string());

    let report = store.remove_image(&a).unwrap();
    assert_eq!(report.images, vec![a.to_string()]);
    assert_eq!(report.layers, vec![layers[1].1.clone()]);
    let freed_blobs: BTreeSet<_> = report.blobs.iter().cloned().collect();
    assert_eq!(
        freed_blobs,
        BTreeSet::from([layers[1].0.clone(), cfg_a.clone()])
    );
    assert!(report.bytes_freed > 0);
    assert!(store.image(&a).unwrap().is_none());
    assert!(store.has_layer(&layers[0].1) && store.has_blob(&layers[0].0));
    assert!(!store.has_layer(&layers[1].1) && !store.has_blob(&layers[1].0));
    assert!(store.has_layer(&layers[2].1) && store.has_blob(&cfg_b));

    let report = store.remove_image(&b).unwrap();
    assert_eq!(report.layers.len(), 2);
    assert!(dir_names(&d.path().join("layers/sha256")).is_empty());
    assert!(dir_names(&d.path().join("blobs/sha256")).is_empty());
    assert!(matches!(
        store.remove_image(&b),
        Err(LayerError::NoSuchImage(_))
    ));
}

#[test]
fn open_removes_leftovers_of_dead_processes_only() {
    let d = tempfile::tempdir().unwrap();
    let store = LayerStore::open(d.path()).unwrap();
    let tmp = d.path().join("tmp");
    // pid_max is at most 2^22 on Linux, so this pid never runs.
    fs::create_dir_all(tmp.join("99999999-1/sub")).unwrap();
    fs::write(tmp.join("99999999-1/sub/f"), b"x").unwrap();
    fs::write(tmp.join("garbage"), b"x").unwrap();
    let live = store.temp_path();
    fs::write(&live, b"in progress").unwrap();
    let _again = LayerStore::open(d.path()).unwrap();
    assert_eq!(
        dir_names(&tmp),
        vec![live.file_name().unwrap().to_string_lossy().into_owned()]
    );
}

#[test]
fn remove_image_also_collects_crash_leftovers() {
    // A blob and a tree committed by a pull that crashed before writing its record.
    let d = tempfile::tempdir().unwrap();
    let store = LayerStore::open(d.path()).unwrap();
    let orphan_tar = layer_tar(&[("orphan", b"o")]);
    let orphan_blob = put_blob(&store, &orphan_tar);
    store
        .unpack_blob(
            "img",
            &orphan_blob,
            BlobCompression::None,
            &Digest::of(&orphan_tar),
        )
        .unwrap();
    let kept_tar = layer_tar(&[("kept", b"k")]);
    let kept_blob = put_blob(&store, &kept_tar);
    let kept_diff = Digest::of(&kept_tar);
    store
        .unpack_blob("img", &kept_blob, BlobCompression::None, &kept_diff)
        .unwrap();
    let cfg = Digest::of(b"{}");
    store.put_blob_bytes(&cfg, b"{}").unwrap();
    let a: Reference = "example.com/a:1".parse().unwrap();
    let b: Reference = "example.com/b:1".parse().unwrap();
    store
        .put_image(&record(&a.to_string(), &[(&kept_blob, &kept_diff)], &cfg))
        .unwrap();
    store
        .put_image(&record(&b.to_string(), &[(&kept_blob, &kept_diff)], &cfg))
        .unwrap();

    let report = store.remove_image(&a).unwrap();
    assert_eq!(report.blobs, vec![orphan_blob.clone()]);
    assert_eq!(report.layers, vec![Digest::of(&orphan_tar)]);
    assert!(store.has_layer(&kept_diff) && store.has_blob(&kept_blob) && store.has_blob(&cfg));
}
