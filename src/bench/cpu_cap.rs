//! A CPU cap for a benchmarked process: a control group of its own with a quota of so many
//! cores (cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`), so that replicas measured
//! on one small machine each have the compute a machine of their own would give them.
//! Needs a writable cgroup filesystem (root, or a delegated subtree).

use anyhow::Context;
use std::path::{Path, PathBuf};

/// Quota period: 100 ms, the kernel's default.
const PERIOD_US: u64 = 100_000;

/// A control group holding capped processes; removed on drop (after they ended).
pub struct CpuCap {
    dir: PathBuf,
}

/// Where control groups with a CPU controller can be made, and whether it is cgroup v2.
fn cpu_hierarchy() -> anyhow::Result<(PathBuf, bool)> {
    let unified = Path::new("/sys/fs/cgroup");
    let controllers = std::fs::read_to_string(unified.join("cgroup.controllers")).unwrap_or_default();
    if controllers.split_whitespace().any(|c| c == "cpu") {
        // Child groups get the controller only when the parent hands it down.
        let _ = std::fs::write(unified.join("cgroup.subtree_control"), "+cpu");
        return Ok((unified.to_owned(), true));
    }
    let v1 = unified.join("cpu");
    anyhow::ensure!(
        v1.join("cpu.cfs_quota_us").exists(),
        "no cgroup CPU controller found (neither cgroup v2 with \"cpu\" nor v1 at {})",
        v1.display()
    );
    Ok((v1, false))
}

impl CpuCap {
    /// A new group `name` whose processes share at most `cores` cores.
    pub fn new(name: &str, cores: f64) -> anyhow::Result<CpuCap> {
        anyhow::ensure!(
            cores > 0.0 && cores <= 1024.0,
            "a CPU cap of {cores} cores: give more than 0"
        );
        let (root, v2) = cpu_hierarchy()?;
        let dir = root.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("creating control group {}", dir.display()))?;
        let cap = CpuCap { dir };
        let quota = ((cores * PERIOD_US as f64) as u64).max(1000);
        let written = if v2 {
            std::fs::write(cap.dir.join("cpu.max"), format!("{quota} {PERIOD_US}"))
        } else {
            std::fs::write(cap.dir.join("cpu.cfs_period_us"), PERIOD_US.to_string())
                .and_then(|()| std::fs::write(cap.dir.join("cpu.cfs_quota_us"), quota.to_string()))
        };
        written.with_context(|| format!("setting the CPU quota of {}", cap.dir.display()))?;
        Ok(cap)
    }

    /// Moves process `pid` (all its threads) into the group.
    pub fn add(&self, pid: u32) -> anyhow::Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving process {pid} into {}", self.dir.display()))
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        // Its processes were killed and reaped before; the group empties a moment later.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!("bench: could not remove control group {}", self.dir.display());
    }
}
