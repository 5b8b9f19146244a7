//! Signals nix offers no safe call for: a no-op handler (so a signal can
//! interrupt a blocked syscall) and a timed wait.

use std::time::Duration;

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal};

extern "C" fn noop_handler(_: libc::c_int) {}

/// Installs a handler that does nothing for `sig`: delivering it to a
/// thread interrupts a blocking syscall there (EINTR) without any effect.
pub fn install_noop_handler(sig: Signal) -> nix::Result<()> {
    let sa = SigAction::new(
        SigHandler::Handler(noop_handler),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler is an async-signal-safe no-op.
    unsafe { nix::sys::signal::sigaction(sig, &sa) }.map(drop)
}

/// sigtimedwait(2): the pending signal of `set` taken within `timeout`, or
/// None.
pub fn sigtimedwait(set: &SigSet, timeout: Duration) -> Option<libc::c_int> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    // SAFETY: `set` is an initialised sigset_t, `ts` a valid timespec; a
    // null siginfo pointer is allowed.
    let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::{pthread_sigmask, SigmaskHow};

    #[test]
    fn sigtimedwait_takes_a_pending_signal_or_times_out() {
        // On a thread of its own: the mask and the pending signal are
        // this thread's only.
        std::thread::spawn(|| {
            let mut set = SigSet::empty();
            set.add(Signal::SIGWINCH);
            pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).unwrap();
            assert_eq!(sigtimedwait(&set, Duration::ZERO), None);
            let me = nix::sys::pthread::pthread_self();
            nix::sys::pthread::pthread_kill(me, Signal::SIGWINCH).unwrap();
            assert_eq!(
                sigtimedwait(&set, Duration::from_secs(5)),
                Some(libc::SIGWINCH)
            );
        })
        .join()
        .unwrap();
    }
}
