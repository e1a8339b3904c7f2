//! Start-up code leaves the resident set once the daemon is ready. Parsing the configuration,
//! restoring the journal, loading plugins and starting telemetry run code and read tables (the
//! dynamic loader's relocations among them) that serving never touches again, yet their pages
//! stay mapped, and the kernel maps up to 64 KiB around every page touched (fault-around).
//! Measured, that was about 7.5 MiB of an idle daemon's 22.5 (BENCHMARKS.md, "Round nine").
//! The same holds for the shared libraries (the loader's own code, `libm`, most of `libc`)
//! and for the plugins' compiled code, which loading and instantiating read in full, and of
//! which a plugin whose hook never runs (the error translator, on a healthy day) needs none.
//!
//! So just before the daemon says it listens, every read-only file mapping is unmapped
//! (`madvise(MADV_DONTNEED)`): the pages stay in the page cache, and those serving needs come
//! back on first use through a minor fault. A plugin reload, which may run the compiler, ends
//! the same way. Only mappings that hold nothing but their file's own pages are released: a
//! read-only mapping with private copies (the relocated RELRO data, or code a debugger
//! patched) would lose them, so it is left alone, as are anonymous and special mappings.

// The smaps reading below serves Linux only; elsewhere only its tests use it.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::io;

/// What [`release`] unmapped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    pub mappings: usize,
    /// Resident before the release, in KiB, of the mappings released.
    pub kib: u64,
}

/// [`release`], logged at debug (`after`: what just ended). A blocking call: reading smaps
/// takes about a millisecond.
pub fn release_logged(after: &str) {
    match release() {
        Ok(r) => tracing::debug!(
            "pages released after {after}: {} KiB in {} mappings",
            r.kib,
            r.mappings
        ),
        Err(e) => tracing::debug!("pages not released after {after}: {e}"),
    }
}

/// Unmaps the read-only, file-only mappings (Linux; elsewhere nothing).
pub fn release() -> io::Result<Released> {
    #[cfg(target_os = "linux")]
    {
        let smaps = std::fs::read_to_string("/proc/self/smaps")?;
        let mut out = Released::default();
        for m in candidates(&smaps) {
            // SAFETY: the range is a whole mapping of a file that is not writable and holds
            // no private (anonymous) page, so every page of it can be read back from the file
            // unchanged; nothing in this process writes to it, being read-only, so none can
            // become private between the read of smaps and here. A file truncated under its
            // mapping would fault on the pages never touched before as well: nothing new.
            let r = unsafe {
                nix::libc::madvise(m.start as *mut _, m.end - m.start, nix::libc::MADV_DONTNEED)
            };
            if r == 0 {
                out.mappings += 1;
                out.kib += m.rss_kib;
            }
        }
        Ok(out)
    }
    #[cfg(not(target_os = "linux"))]
    Ok(Released::default())
}

#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    rss_kib: u64,
}

/// The mappings of files in `smaps` that are readable, not writable, and hold no anonymous
/// page. Anonymous mappings and the kernel's own (`[vdso]`, `[vvar]`) have no inode.
fn candidates(smaps: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    let mut current: Option<(Mapping, bool)> = None; // (mapping, still a candidate)
    let finish = |c: Option<(Mapping, bool)>, out: &mut Vec<Mapping>| {
        if let Some((m, true)) = c {
            out.push(m);
        }
    };
    for line in smaps.lines() {
        if let Some(header) = header(line) {
            finish(current.take(), &mut out);
            let ok = header.perms.starts_with('r')
                && header.perms.as_bytes().get(1) == Some(&b'-')
                && header.ino != 0;
            current = Some((
                Mapping {
                    start: header.start,
                    end: header.end,
                    rss_kib: 0,
                },
                ok,
            ));
            continue;
        }
        let Some((m, ok)) = current.as_mut() else {
            continue;
        };
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let kib = || -> Option<u64> { rest.trim().strip_suffix("kB")?.trim().parse().ok() };
        match key {
            "Rss" => m.rss_kib = kib().unwrap_or(0),
            // Any private copy (or a field that does not parse) keeps the mapping. Not
            // `Private_Dirty`: a file page written and not yet flushed counts there too.
            "Anonymous" | "Swap" | "Locked" if kib() != Some(0) => *ok = false,
            _ => {}
        }
    }
    finish(current, &mut out);
    out
}

struct Header<'a> {
    start: usize,
    end: usize,
    perms: &'a str,
    ino: u64,
}

/// `start-end perms offset major:minor inode [path]`, or `None` for a field line.
fn header(line: &str) -> Option<Header<'_>> {
    let mut f = line.split_ascii_whitespace();
    let (start, end) = f.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = f.next()?;
    if perms.len() != 4 {
        return None;
    }
    let _offset = f.next()?;
    let _device = f.next()?.split_once(':')?;
    let ino = f.next()?.parse().ok()?;
    Some(Header {
        start,
        end,
        perms,
        ino,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55a0-55b0 r--p 00000000 fe:00 77 /usr/bin/acpd
Size:                 64 kB
Rss:                  40 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
Swap:                  0 kB
Locked:                0 kB
VmFlags: rd mr mw me
55b0-55c0 r-xp 00953000 fe:00 77 /usr/bin/acpd
Rss:                  60 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
55c0-55d0 r--p 02465000 fe:00 77 /usr/bin/acpd
Rss:                  16 kB
Private_Dirty:        16 kB
Anonymous:            16 kB
55c8-55c9 r-xp 00000000 fe:00 77 /usr/bin/acpd
Rss:                   4 kB
Private_Dirty:         4 kB
Anonymous:             0 kB
Locked:                4 kB
55d0-55e0 rw-p 02568000 fe:00 77 /usr/bin/acpd
Rss:                   8 kB
Anonymous:             0 kB
7f00-7f10 r-xp 00000000 fe:00 78 /usr/lib/libc.so.6
Rss:                 100 kB
Anonymous:             0 kB
7f10-7f20 r-xp 00000000 fe:01 77 /other/device
Rss:                 100 kB
Anonymous:             0 kB
7f20-7f30 r--p 00000000 00:00 0 
Rss:                   8 kB
Anonymous:             0 kB
7f30-7f31 r--p 00000000 00:00 0                          [vvar]
Rss:                   4 kB
Anonymous:             0 kB
7f31-7f32 r-xp 00000000 00:00 0                          [vdso]
Rss:                   4 kB
Anonymous:             0 kB
";

    /// The code and read-only data of the executable and of other files go, dirty file pages
    /// or not; relocated read-only data (private pages), a locked mapping, writable data, an
    /// anonymous read-only mapping and the kernel's `[vvar]` and `[vdso]` stay.
    #[test]
    fn only_file_only_read_only_mappings_are_released() {
        let got = candidates(SMAPS);
        assert_eq!(
            got,
            vec![
                Mapping {
                    start: 0x55a0,
                    end: 0x55b0,
                    rss_kib: 40
                },
                Mapping {
                    start: 0x55b0,
                    end: 0x55c0,
                    rss_kib: 60
                },
                Mapping {
                    start: 0x7f00,
                    end: 0x7f10,
                    rss_kib: 100
                },
                Mapping {
                    start: 0x7f10,
                    end: 0x7f20,
                    rss_kib: 100
                },
            ]
        );
    }

    /// A field that does not parse keeps the mapping (no release on a guess).
    #[test]
    fn an_unreadable_private_count_keeps_the_mapping() {
        let smaps = "55a0-55b0 r-xp 00000000 fe:00 77 /x\nAnonymous: lots\n";
        assert!(candidates(smaps).is_empty());
    }

    /// In this test process: the release unmaps the executable's code and the shared
    /// libraries', which keep running (the pages that run this test are faulted back in), and
    /// calling it again is harmless.
    #[cfg(target_os = "linux")]
    #[test]
    fn releasing_the_executables_pages_keeps_it_running() {
        let first = release().unwrap();
        assert!(first.mappings >= 1, "{first:?}");
        assert!(first.kib > 0, "{first:?}");
        // The code is back where it is used: a second release finds it resident again.
        let second = release().unwrap();
        assert!(second.mappings >= 1, "{second:?}");
        assert!(second.kib > 0, "{second:?}");
    }
}
