//! Process-wide calls of start-up: fork, closing inherited fds, returning
//! heap memory. Whatever nix has safely is called directly by the callers.

use std::io;
use std::os::fd::RawFd;

use nix::unistd::Pid;

/// Threads of this process (entries of /proc/self/task), if readable.
fn thread_count() -> Option<usize> {
    std::fs::read_dir(super::proc_self("task"))
        .ok()
        .map(|d| d.count())
}

/// Which side of a [`fork`] this is.
pub enum Forked {
    Parent(Pid),
    Child,
}

/// fork(2), refused (EBUSY) once the process has a second thread: the child
/// goes on running Rust code (allocating, locking), which is only sound
/// when no other thread could have held a lock at the fork.
pub fn fork() -> io::Result<Forked> {
    if thread_count().is_some_and(|n| n > 1) {
        return Err(io::Error::other(
            "fork: the process is no longer single-threaded",
        ));
    }
    // SAFETY: the process has one thread (checked above; the daemon forks
    // before it spawns any), so no lock is held by a thread that would be
    // missing in the child.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Closes the fds in `fd_dir` (a /proc/PID/fd listing) that are directories
/// or O_PATH fds; returns their numbers. For the sandbox at start-up: call
/// it single-threaded (refused with EBUSY otherwise, nothing closed), while
/// the process itself owns no directory or O_PATH fd, so whatever it closes
/// was inherited and has no owner in this process.
pub fn close_inherited_dir_fds(fd_dir: &str) -> io::Result<Vec<RawFd>> {
    if thread_count().is_some_and(|n| n > 1) {
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            "closing inherited fds: the process is no longer single-threaded",
        ));
    }
    let Ok(dir) = std::fs::read_dir(fd_dir) else {
        return Ok(Vec::new());
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut closed = Vec::new();
    for fd in fds {
        // SAFETY: fcntl/fstat on a number that may no longer be open (the
        // read_dir fd itself) only fail with EBADF; the close is of an
        // inherited fd nothing in this process owns (see the doc above).
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            let mut st: libc::stat = std::mem::zeroed();
            if fl < 0 || libc::fstat(fd, &mut st) != 0 {
                continue;
            }
            if fl & libc::O_PATH != 0 || st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                libc::close(fd);
                closed.push(fd);
            }
        }
    }
    Ok(closed)
}

/// Returns free heap memory to the system (glibc's malloc_trim; a no-op
/// elsewhere).
pub fn malloc_trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_and_closing_fds_are_refused_once_threads_exist() {
        // The test harness runs tests on threads of their own, and this
        // one keeps a second thread alive while it checks.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || rx.recv());
        assert!(thread_count().is_some_and(|n| n > 1));
        assert!(fork().is_err(), "fork must be refused");
        let e = close_inherited_dir_fds(&super::super::proc_self("fd")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ResourceBusy);
        drop(tx);
        let _ = t.join();
    }
}
