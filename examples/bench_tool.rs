//! Small timed workloads for bench/bench.py, in compiled code so that the
//! measurement is the filesystem's, not an interpreter's:
//!
//!     bench_tool mktree DIR DIRS FILES_PER_DIR     make DIRS*FILES empty files
//!     bench_tool stat DIR                          lstat every entry under DIR
//!     bench_tool create-unlink DIR N               create N small files, unlink them
//!     bench_tool lookup-miss DIR N                 lstat N names that do not exist
//!
//! `lookup-miss` times one FUSE round trip with nothing else in it: each
//! name is new, so the kernel has no negative dentry for it and asks the
//! daemon (LOOKUP, answered ENOENT), and the daemon's work is one failing
//! openat.
//!
//! Prints one JSON object: {"seconds": ..., "ops": ...}.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// lstat(2) itself: Rust's metadata() asks statx for the birth time, which
/// FUSE never caches, so every call would reach the daemon.
fn lstat_is_dir(p: &Path) -> std::io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())?;
    // SAFETY: libc::stat is plain old data; zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and output buffer.
    if unsafe { libc::lstat(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

fn walk(dir: &Path, n: &mut u64) -> std::io::Result<()> {
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        let is_dir = lstat_is_dir(&p)?;
        *n += 1;
        if is_dir {
            walk(&p, n)?;
        }
    }
    Ok(())
}

fn usage() -> ! {
    eprintln!(
        "usage: bench_tool mktree DIR DIRS FILES | stat DIR | create-unlink DIR N | lookup-miss DIR N"
    );
    std::process::exit(64)
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        usage();
    }
    let dir = Path::new(&args[2]);
    let t = Instant::now();
    let ops = match args[1].as_str() {
        "mktree" => {
            let (dirs, files): (u64, u64) = match (args.get(3), args.get(4)) {
                (Some(d), Some(f)) => (d.parse().unwrap_or(0), f.parse().unwrap_or(0)),
                _ => usage(),
            };
            for d in 0..dirs {
                let sub = dir.join(format!("d{d:04}"));
                fs::create_dir_all(&sub)?;
                for f in 0..files {
                    fs::File::create(sub.join(format!("f{f:05}")))?;
                }
            }
            dirs * files
        }
        "stat" => {
            let mut n = 0;
            walk(dir, &mut n)?;
            n
        }
        "create-unlink" => {
            let n: u64 = args
                .get(3)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| usage());
            let payload = [b'x'; 100];
            for i in 0..n {
                let mut f = fs::File::create(dir.join(format!("c{i:06}")))?;
                f.write_all(&payload)?;
            }
            for i in 0..n {
                fs::remove_file(dir.join(format!("c{i:06}")))?;
            }
            2 * n
        }
        "lookup-miss" => {
            let n: u64 = args
                .get(3)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| usage());
            // A tag per run, so a second run in the same directory does
            // not meet the negative dentries of the first.
            let tag = std::process::id();
            for i in 0..n {
                match lstat_is_dir(&dir.join(format!("miss-{tag}-{i}"))) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                    Ok(_) => {
                        return Err(std::io::Error::other("lookup-miss: a name exists"));
                    }
                }
            }
            n
        }
        _ => usage(),
    };
    println!(
        "{{\"seconds\": {:.6}, \"ops\": {}}}",
        t.elapsed().as_secs_f64(),
        ops
    );
    Ok(())
}
