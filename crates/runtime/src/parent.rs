//! A service started by a supervisor (`fedsx up`) dies with it: the supervisor names itself
//! in [`PARENT_PID_ENV`], and the child asks the kernel for SIGTERM when its parent goes
//! (also after a `kill -9` of the parent, which can do nothing itself), then checks that the
//! parent did not already go before it asked.

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use nix::unistd::{Pid, getppid};

/// Set by a supervisor on each child it starts: the supervisor's pid.
pub const PARENT_PID_ENV: &str = "FEDSX_PARENT_PID";

/// When started by a supervisor, arranges SIGTERM on the supervisor's death (a graceful
/// stop, as if it had asked); fails if the supervisor is already gone. Without the variable
/// (a service run by hand, by systemd or in a container) it does nothing.
pub fn die_with_parent() -> anyhow::Result<()> {
    let Ok(value) = std::env::var(PARENT_PID_ENV) else {
        return Ok(());
    };
    let parent: i32 = value
        .parse()
        .with_context(|| format!("{PARENT_PID_ENV}={value:?} is not a process id"))?;
    set_pdeathsig()?;
    // The supervisor may have died between starting us and the call above, which then
    // never fires: we would have been re-parented already.
    if getppid() != Pid::from_raw(parent) {
        bail!("the supervisor that started this service (pid {parent}) is gone; not starting");
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn set_pdeathsig() -> anyhow::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).context("asking to be stopped with the supervisor")
}

#[cfg(not(target_os = "linux"))]
fn set_pdeathsig() -> anyhow::Result<()> {
    // No parent-death signal here: the start check above is all there is.
    let _ = Signal::SIGTERM;
    Ok(())
}
