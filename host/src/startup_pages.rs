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
//!
//! Only mappings that cannot go away while the release runs are touched: the segments of the
//! loaded ELF objects (nothing in acpd unloads a library) and the plugin code images the
//! caller holds. Between reading `smaps` and `madvise`, other threads go on serving, and a
//! plugin set replaced by a reload is unmapped when its last call ends; the kernel may then
//! put anything at that address (a fiber stack, a large allocation), which `MADV_DONTNEED`
//! would zero. Measured with the window widened: the old set's code mappings vanished between
//! the two steps in most reloads under load.

// The smaps reading below serves Linux only; elsewhere only its tests use it.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::io;
use std::ops::Range;

/// What [`release`] unmapped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    pub mappings: usize,
    /// Resident before the release, in KiB, of the mappings released.
    pub kib: u64,
}

/// [`release`], logged at debug (`after`: what just ended). A blocking call: reading smaps
/// takes about a millisecond.
pub fn release_logged(after: &str, held: &[Range<usize>]) {
    match release(held) {
        Ok(r) => tracing::debug!(
            "pages released after {after}: {} KiB in {} mappings",
            r.kib,
            r.mappings
        ),
        Err(e) => tracing::debug!("pages not released after {after}: {e}"),
    }
}

/// Unmaps the read-only, file-only mappings of the loaded ELF objects and those inside `held`
/// (Linux; elsewhere nothing). `held`: code images (plugins') the caller keeps mapped until
/// this returns.
pub fn release(held: &[Range<usize>]) -> io::Result<Released> {
    #[cfg(target_os = "linux")]
    {
        let mut stable = loaded_objects();
        stable.extend(held.iter().cloned());
        let smaps = std::fs::read_to_string("/proc/self/smaps")?;
        let mut out = Released::default();
        for m in candidates(&smaps, &stable, page_size()) {
            // SAFETY: the range is a whole mapping of a file that is not writable and holds
            // no private (anonymous) page, so every page of it can be read back from the file
            // unchanged; nothing in this process writes to it, being read-only, so none can
            // become private between the read of smaps and here. It lies inside a loaded
            // object's segment or a code image the caller holds, so it is still the same
            // mapping: neither is unmapped while this runs. A file truncated under its
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
    {
        let _ = held;
        Ok(Released::default())
    }
}

/// The address ranges of the `PT_LOAD` segments of every loaded ELF object: the executable,
/// the shared libraries and the dynamic loader, mapped for the life of the process.
#[cfg(target_os = "linux")]
fn loaded_objects() -> Vec<Range<usize>> {
    use nix::libc;
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the vector passed below, and the loader hands a valid `info`
        // whose `dlpi_phdr` points at `dlpi_phnum` program headers, for this call.
        let (out, info) = unsafe { (&mut *(data as *mut Vec<Range<usize>>), &*info) };
        if info.dlpi_phdr.is_null() {
            return 0;
        }
        let headers =
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
        for h in headers.iter().filter(|h| h.p_type == libc::PT_LOAD) {
            let start = (info.dlpi_addr as usize).wrapping_add(h.p_vaddr as usize);
            out.push(start..start.saturating_add(h.p_memsz as usize));
        }
        0
    }
    let mut out = Vec::new();
    // SAFETY: `each` only reads what the loader passes and pushes to `out`, which outlives
    // the call; it neither unwinds nor calls back into the loader.
    unsafe { libc::dl_iterate_phdr(Some(each), &mut out as *mut Vec<_> as *mut libc::c_void) };
    out
}

/// The system's page size (4 KiB where it cannot be read).
pub fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system.
    match unsafe { nix::libc::sysconf(nix::libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    rss_kib: u64,
}

/// The mappings of files in `smaps` that are readable, not writable, hold no anonymous page
/// and lie inside one of `stable` (widened to whole pages). Anonymous mappings and the
/// kernel's own (`[vdso]`, `[vvar]`) have no inode.
fn candidates(smaps: &str, stable: &[Range<usize>], page: usize) -> Vec<Mapping> {
    let inside = |start: usize, end: usize| {
        stable.iter().any(|r| {
            let (lo, hi) = (
                r.start / page * page,
                r.end.div_ceil(page).saturating_mul(page),
            );
            lo <= start && end <= hi
        })
    };
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
                && header.ino != 0
                && inside(header.start, header.end);
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

// `&[a..b]` here is a list of address ranges, not a vector of the numbers in one.
#[allow(clippy::single_range_in_vec_init)]
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
        let got = candidates(SMAPS, &[0..usize::MAX], 4096);
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
        assert!(candidates(smaps, &[0..usize::MAX], 4096).is_empty());
    }

    /// A mapping outside every stable range stays, whatever it holds: it may be unmapped and
    /// its address reused while the release runs. A range's ends are widened to whole pages.
    #[test]
    fn only_mappings_inside_stable_ranges_are_released() {
        let starts = |stable: &[Range<usize>], page: usize| -> Vec<usize> {
            candidates(SMAPS, stable, page)
                .iter()
                .map(|m| m.start)
                .collect()
        };
        assert_eq!(starts(&[], 0x10), Vec::<usize>::new());
        assert_eq!(starts(&[0x55a0..0x55c0], 0x10), vec![0x55a0, 0x55b0]);
        // 0x55a4..0x55b8 widens to 0x55a0..0x55c0.
        assert_eq!(starts(&[0x55a4..0x55b8], 0x10), vec![0x55a0, 0x55b0]);
        // Half a mapping is not the mapping; a range ending inside its last page covers it.
        assert_eq!(starts(&[0x7f00..0x7f08], 0x8), Vec::<usize>::new());
        assert_eq!(starts(&[0x7f00..0x7f0c], 0x8), vec![0x7f00]);
    }

    /// In this test process: the release unmaps the executable's code and the shared
    /// libraries', which keep running (the pages that run this test are faulted back in), and
    /// calling it again is harmless.
    #[cfg(target_os = "linux")]
    #[test]
    fn releasing_the_executables_pages_keeps_it_running() {
        let first = release(&[]).unwrap();
        assert!(first.mappings >= 1, "{first:?}");
        assert!(first.kib > 0, "{first:?}");
        // The code is back where it is used: a second release finds it resident again.
        let second = release(&[]).unwrap();
        assert!(second.mappings >= 1, "{second:?}");
        assert!(second.kib > 0, "{second:?}");
    }

    /// A read-only file mapping that is neither a loaded object's nor held by the caller (as
    /// an old plugin set's code, which its last call may unmap at any moment) keeps its pages;
    /// held, it is released.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_mapping_is_released_only_when_held() {
        use nix::libc;
        use std::io::Write;
        // Unlinked already; the open file (and the mapping) keep it.
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[7u8; 64 * 1024]).unwrap();
        let len = 64 * 1024;
        // SAFETY: a fresh private read-only mapping of a file this test owns, unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let start = addr as usize;
        let touch = || {
            // SAFETY: inside the mapping made above, which is readable.
            (0..len)
                .step_by(4096)
                .map(|i| unsafe { std::ptr::read_volatile((start + i) as *const u8) } as usize)
                .sum::<usize>()
        };
        let rss = || {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            candidates(&smaps, &[start..start + len], page_size())
                .iter()
                .find(|m| m.start == start)
                .map(|m| m.rss_kib)
        };
        assert_eq!(touch(), 7 * 16);
        assert_eq!(rss(), Some(64));
        release(&[]).unwrap();
        assert_eq!(rss(), Some(64), "released without being held");
        release(&[start..start + len]).unwrap();
        assert_eq!(rss(), Some(0), "held, yet not released");
        assert_eq!(touch(), 7 * 16, "the file's pages come back");
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(addr, len) };
    }
}
