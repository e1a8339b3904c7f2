//! What `/proc/<pid>/stat` says about a process: enough to tell one process from a later one
//! that got the same pid (its start time) and which group and session it is in.

/// The fields of `/proc/<pid>/stat` acpd uses (see proc(5)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    /// `R`, `S`, `Z`, ...: a zombie (`Z`) has exited and only waits to be reaped.
    pub state: char,
    pub pgrp: u32,
    pub session: u32,
    /// When the process started, in clock ticks since boot (field 22): with the pid, it names one
    /// process for as long as the machine runs.
    pub start: u64,
}

impl Stat {
    pub fn read(pid: u32) -> Option<Stat> {
        parse(
            pid,
            &std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?,
        )
    }

    /// Exited and not yet reaped: it holds nothing but its pid.
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

fn parse(pid: u32, stat: &str) -> Option<Stat> {
    // The command name (field 2) is in parentheses and may contain anything, `)` included.
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields 3 (state) onwards.
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        pid,
        state: f.first()?.chars().next()?,
        pgrp: f.get(2)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

/// Every process on the machine that can be read now.
pub fn all() -> Vec<Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(Stat::read)
        .collect()
}

/// This boot of the machine: start times count from it, so a record from another boot names
/// nothing that runs now.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_fields_after_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (a) b (c)) S 1 4242 4200 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 \
                    1000 10 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse(4242, line).unwrap();
        assert_eq!(
            s,
            Stat {
                pid: 4242,
                state: 'S',
                pgrp: 4242,
                session: 4200,
                start: 987654
            }
        );
        assert!(parse(1, "1 (truncated) S 0").is_none());
    }

    #[test]
    fn reads_this_process() {
        let me = Stat::read(std::process::id()).expect("own stat");
        assert!(!me.is_zombie());
        assert!(me.start > 0);
        assert_eq!(me.pgrp, nix::unistd::getpgrp().as_raw() as u32);
        assert!(all().iter().any(|s| s.pid == me.pid && s.start == me.start));
        assert!(boot_id().is_some_and(|b| b.len() >= 32));
    }
}
