//! Loop devices through the kernel's ioctls (no `losetup` process on the start path).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64` from `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` from `<linux/loop.h>`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An open, configured loop device. It is read-only and auto-clearing: the kernel detaches it
/// when its last user (this handle, then the mount) goes away, so a crash cannot leak it.
pub(crate) struct LoopDevice {
    _file: File,
    path: PathBuf,
}

impl LoopDevice {
    /// `/dev/loopN`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Binds `disk` to a free loop device, read-only with autoclear.
pub(crate) fn attach_read_only(disk: &Path) -> std::io::Result<LoopDevice> {
    let backing = File::open(disk)?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    // Another process may grab the free device between GET_FREE and CONFIGURE: retry on EBUSY.
    let mut last = None;
    for _ in 0..32 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let file = match OpenOptions::new().read(true).open(&path) {
            Ok(f) => f,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let mut name = [0u8; LO_NAME_SIZE];
        let raw = disk.as_os_str().as_encoded_bytes();
        let len = raw.len().min(LO_NAME_SIZE - 1);
        name[..len].copy_from_slice(&raw[..len]);
        let config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
                lo_file_name: name,
                lo_crypt_name: [0; LO_NAME_SIZE],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: `config` is a valid `struct loop_config` living across the call; the kernel
        // only reads it.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                LOOP_CONFIGURE,
                &config as *const LoopConfig,
            )
        };
        if rc == 0 {
            return Ok(LoopDevice { _file: file, path });
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) {
            return Err(err);
        }
        last = Some(err);
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free loop device")))
}

/// Loop devices in use and the files backing them (from sysfs).
pub(crate) fn backed_devices() -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter_map(|e| {
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let backing = backing
                .trim_end_matches('\n')
                .trim_end_matches(" (deleted)");
            Some((
                PathBuf::from("/dev").join(e.file_name()),
                PathBuf::from(backing),
            ))
        })
        .collect()
}

/// Detaches a loop device nobody has mounted.
pub(crate) fn detach(device: &Path) -> std::io::Result<()> {
    let file = File::open(device)?;
    // SAFETY: LOOP_CLR_FD takes no argument.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), LOOP_CLR_FD) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
