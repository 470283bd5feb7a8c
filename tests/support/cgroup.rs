//! A cgroup of the shape containerd makes for a Kubernetes pod's container, made by a test.

use std::{path::PathBuf, time::Duration};

pub const CONTAINER_ID: &str = "7e3c1a9b5d2f4e6a8c0b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c";
pub const POD_UID: &str = "0d6f2b4a-8c1e-4f3a-9b5d-7e2c4a6f8b1d";

/// The unified (v2) cgroup hierarchy's mount point: /sys/fs/cgroup, or .../unified on hybrid hosts.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        (cols.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(cols[1]))
    })
}

/// Nested cgroups removed (innermost first) when dropped, after their process is gone.
pub struct PodCgroup {
    dirs: Vec<PathBuf>,
}

impl PodCgroup {
    /// kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/
    /// cri-containerd-<id>.scope, as containerd's systemd cgroup driver names them.
    pub fn create(root: &std::path::Path, pid: u32) -> PodCgroup {
        let uid_ = POD_UID.replace('-', "_");
        let names = [
            "kubepods.slice".to_owned(),
            "kubepods-besteffort.slice".to_owned(),
            format!("kubepods-besteffort-pod{uid_}.slice"),
            format!("cri-containerd-{CONTAINER_ID}.scope"),
        ];
        let mut dirs = vec![];
        let mut path = root.to_path_buf();
        for n in names {
            path = path.join(n);
            std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
            dirs.push(path.clone());
        }
        let procs = path.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).unwrap_or_else(|e| panic!("write {}: {e}", procs.display()));
        PodCgroup { dirs }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
