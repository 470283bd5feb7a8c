//! tracefs: where tracepoints are found and attached. Not mounted at boot on every host.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

const MOUNT_POINT: &str = "/sys/kernel/tracing";
const LEGACY: &str = "/sys/kernel/debug/tracing";

/// The tracefs root if it is mounted.
pub fn find() -> Option<PathBuf> {
    [MOUNT_POINT, LEGACY].iter().map(PathBuf::from).find(|p| p.join("events").is_dir())
}

/// Where tracefs is mounted, from /proc/mounts: readable without privileges, unlike tracefs
/// itself (a non-root `check` must not call a mounted but unreadable tracefs unmounted).
pub fn mount_point() -> Option<PathBuf> {
    mount_point_in(&std::fs::read_to_string("/proc/mounts").ok()?)
}

fn mount_point_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, target, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "tracefs").then(|| PathBuf::from(target))
    })
}

/// The tracefs root, mounting it at /sys/kernel/tracing when absent.
pub fn ensure_mounted() -> anyhow::Result<PathBuf> {
    if let Some(root) = find() {
        return Ok(root);
    }
    let target = std::ffi::CString::new(MOUNT_POINT).expect("no NUL");
    let fstype = std::ffi::CString::new("tracefs").expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it failed ({err}); mount it with `mount -t tracefs tracefs {MOUNT_POINT}`"
        );
    }
    log::info!("mounted tracefs at {MOUNT_POINT} (it was not mounted)");
    Ok(PathBuf::from(MOUNT_POINT))
}

/// Byte offset of `field` in the record of tracepoint `category/name`, from its format file.
pub fn field_offset(root: &Path, category: &str, name: &str, field: &str) -> anyhow::Result<u32> {
    let path = root.join("events").join(category).join(name).join("format");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_field_offset(&text, field).with_context(|| format!("no field `{field}` in {}", path.display()))
}

/// Finds `field:<type> <field>;\toffset:N;` in a tracepoint format description.
fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let name = decl.rsplit([' ', '*']).next()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        rest.trim().strip_prefix("offset:")?.split(';').next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORK_6_18: &str = "name: sched_process_fork\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
        \tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
        \tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\
        \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
    const FORK_OLD: &str = "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
        \tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\
        \tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n\
        \tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";

    #[test]
    fn the_mount_point_comes_from_proc_mounts() {
        let mounts = "sysfs /sys sysfs rw 0 0\ntracefs /sys/kernel/tracing tracefs rw,relatime 0 0\n";
        assert_eq!(mount_point_in(mounts), Some(PathBuf::from("/sys/kernel/tracing")));
        assert_eq!(mount_point_in("sysfs /sys sysfs rw 0 0\n"), None);
    }

    #[test]
    fn finds_fields_in_old_and_new_layouts() {
        assert_eq!(parse_field_offset(FORK_6_18, "child_pid"), Some(20));
        assert_eq!(parse_field_offset(FORK_OLD, "child_pid"), Some(44));
        assert_eq!(parse_field_offset(FORK_OLD, "child_comm"), Some(28));
        assert_eq!(parse_field_offset(FORK_OLD, "pid"), None);
    }
}
