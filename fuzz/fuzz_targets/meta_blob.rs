//! The metadata blob decoder: open, check, then walk every inode and
//! relocate; nothing may panic, and a blob that checks out walks cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use puzzle_store::meta::{Kind, MetaBlob};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = MetaBlob::open(data) else { return };
    let checked = m.check().is_ok();
    for n in 0..m.inode_count().min(1 << 16) as u32 {
        let Ok(ino) = m.inode(n) else {
            assert!(!checked);
            continue;
        };
        let r = (|| -> puzzle_store::Result<()> {
            m.xattrs(&ino)?;
            match ino.kind {
                Kind::Dir => {
                    for i in 0..ino.count() {
                        m.dirent(&ino, i)?;
                    }
                }
                Kind::File => {
                    for i in 0..ino.count() {
                        let e = m.extent(&ino, i)?;
                        m.chunk(e.chunk)?;
                    }
                    m.find_extent(&ino, ino.size / 2)?;
                }
                Kind::Symlink => {
                    m.symlink_target(&ino)?;
                }
                _ => {}
            }
            Ok(())
        })();
        assert!(r.is_ok() || !checked, "checked blob failed to walk: {r:?}");
    }
    if checked {
        m.relocate(|r| Ok(r.loc)).unwrap();
    }
});
