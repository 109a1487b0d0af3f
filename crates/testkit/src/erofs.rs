//! What a cache disk is on disk: tests assert that a build wrote a real EROFS image, so they
//! cannot pass on the plain-directory fallback when `mkfs.erofs` or loop devices are missing.

use std::io::Read;
use std::path::Path;

/// The EROFS superblock magic (little-endian), `EROFS_SUPER_MAGIC_V1` in the kernel.
pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;

/// Where the superblock (and its magic) starts.
pub const SUPERBLOCK_OFFSET: usize = 1024;

/// Whether `path` (a symlink is followed) is a regular file starting with an EROFS superblock.
pub fn is_erofs(path: &Path) -> std::io::Result<bool> {
    if !std::fs::metadata(path)?.is_file() {
        return Ok(false);
    }
    let mut head = Vec::with_capacity(SUPERBLOCK_OFFSET + 4);
    std::fs::File::open(path)?
        .take((SUPERBLOCK_OFFSET + 4) as u64)
        .read_to_end(&mut head)?;
    Ok(head
        .get(SUPERBLOCK_OFFSET..SUPERBLOCK_OFFSET + 4)
        .and_then(|m| <[u8; 4]>::try_from(m).ok())
        .is_some_and(|m| u32::from_le_bytes(m) == EROFS_MAGIC))
}

impl crate::apiserver::TestServer {
    /// Panics unless the current disk of `cache` (an ImageCache as `kubectl get -o json` shows
    /// it, with `status.imageCacheId`) is an EROFS image: `DIR/caches/<id>.erofs`.
    pub fn assert_cache_is_erofs(&self, cache: &serde_json::Value) {
        let id = cache["status"]["imageCacheId"]
            .as_str()
            .unwrap_or_else(|| panic!("the cache has no id: {cache:#}"));
        assert_erofs(&self.data_dir().join(format!("caches/{id}.erofs")));
    }
}

/// Panics unless `path` is an EROFS image (see [`is_erofs`]), naming what it is instead.
pub fn assert_erofs(path: &Path) {
    match is_erofs(path) {
        Ok(true) => {}
        Ok(false) => panic!(
            "{} is not an EROFS image (a directory, or no EROFS magic at offset {SUPERBLOCK_OFFSET}): did the build fall back to the plain-directory backend?",
            path.display()
        ),
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_an_erofs_image_from_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut image = vec![0u8; 4096];
        image[SUPERBLOCK_OFFSET..SUPERBLOCK_OFFSET + 4].copy_from_slice(&EROFS_MAGIC.to_le_bytes());
        let erofs = dir.path().join("a.erofs");
        std::fs::write(&erofs, &image).unwrap();
        assert!(is_erofs(&erofs).unwrap());
        let link = dir.path().join("link.erofs");
        std::os::unix::fs::symlink("a.erofs", &link).unwrap();
        assert!(is_erofs(&link).unwrap(), "a symlink is followed");

        image[SUPERBLOCK_OFFSET] ^= 1;
        let other = dir.path().join("b.erofs");
        std::fs::write(&other, &image).unwrap();
        assert!(!is_erofs(&other).unwrap());
        let short = dir.path().join("short");
        std::fs::write(&short, b"tiny").unwrap();
        assert!(!is_erofs(&short).unwrap());
        assert!(!is_erofs(dir.path()).unwrap(), "a plain directory disk");
        assert!(is_erofs(&dir.path().join("missing")).is_err());
    }
}
