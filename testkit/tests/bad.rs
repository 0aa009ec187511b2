//! The hostile tars say what they claim, and the layout damage helpers do
//! what they claim.

use std::fs;

use puzzle_testkit::bad;
use puzzle_testkit::{sha256_digest, Compression, Entry, Image};

fn headers(t: &[u8]) -> Vec<(Vec<u8>, tar::EntryType, Option<Vec<u8>>)> {
    let mut ar = tar::Archive::new(t);
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path_bytes().into_owned(),
                e.header().entry_type(),
                e.link_name_bytes().map(|l| l.into_owned()),
            )
        })
        .collect()
}

#[test]
fn escaping_names() {
    assert_eq!(headers(&bad::dotdot_tar())[0].0, b"../escape");
    assert_eq!(headers(&bad::inner_dotdot_tar())[0].0, b"a/../../escape");
    assert_eq!(headers(&bad::absolute_tar())[0].0, b"/etc/abs");
}

#[test]
fn escaping_links() {
    let h = headers(&bad::symlink_escape_tar(b"/tmp"));
    assert_eq!(
        h[0],
        (
            b"link".to_vec(),
            tar::EntryType::Symlink,
            Some(b"/tmp".to_vec())
        )
    );
    assert_eq!(
        (h[1].0.as_slice(), h[1].1),
        (&b"link/evil"[..], tar::EntryType::Regular)
    );
    let h = headers(&bad::hardlink_escape_tar(b"../../etc/passwd"));
    assert_eq!(
        h[1],
        (
            b"passwd".to_vec(),
            tar::EntryType::Link,
            Some(b"../../etc/passwd".to_vec())
        )
    );
}

#[test]
fn huge_sizes_are_claimed_not_present() {
    for t in [bad::huge_size_tar(), bad::huge_pax_size_tar()] {
        assert!(t.len() < 2048);
        let mut ar = tar::Archive::new(t.as_slice());
        let mut entries = ar.entries().unwrap();
        let e = entries.next().unwrap().unwrap();
        assert_eq!(e.size(), 1 << 40);
    }
}

#[test]
fn bad_checksum_is_rejected() {
    let t = bad::bad_checksum_tar();
    let mut ar = tar::Archive::new(t.as_slice());
    let first = ar.entries().unwrap().next().unwrap();
    assert!(first.is_err());
}

#[test]
fn layout_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path();
    let w = Image::new()
        .layer(
            &[Entry::file("f", "some contents here\n")],
            Compression::Gzip,
        )
        .write_oci_layout(layout, "t")
        .unwrap();

    let cfg = bad::blob_path(layout, &w.config_digest);
    let before = fs::read(&cfg).unwrap();
    bad::corrupt_blob(layout, &w.config_digest).unwrap();
    let after = fs::read(&cfg).unwrap();
    assert_eq!(before.len(), after.len());
    assert_ne!(sha256_digest(&after), w.config_digest);

    let layer = &w.layer_digests[0];
    bad::truncate_blob(layout, layer, 10).unwrap();
    assert_eq!(
        fs::metadata(bad::blob_path(layout, layer)).unwrap().len(),
        10
    );

    bad::remove_blob(layout, &w.manifest_digest).unwrap();
    assert!(!bad::blob_path(layout, &w.manifest_digest).exists());

    bad::write_malformed_index(layout).unwrap();
    let idx = fs::read(layout.join("index.json")).unwrap();
    assert!(serde_json::from_slice::<serde_json::Value>(&idx).is_err());
}
