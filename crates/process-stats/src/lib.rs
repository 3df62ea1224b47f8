#![doc = include_str!("../README.md")]

use std::time::Duration;

/// Clock ticks a second in `/proc/<pid>/stat` (`USER_HZ`): 100 on every
/// Linux ABI.
const TICKS_PER_SECOND: u64 = 100;
/// Bytes a page: 4 KiB on the platforms OpenCalling builds for.
const PAGE_SIZE: u64 = 4096;

/// What one reading of a process's `/proc/<pid>/stat` says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessStats {
    /// CPU time used so far, user and system together.
    pub cpu: Duration,
    /// Resident memory.
    pub resident_bytes: u64,
    /// Virtual memory.
    pub virtual_bytes: u64,
    /// Threads.
    pub threads: u64,
}

impl ProcessStats {
    /// The figures of process `pid`; `None` where there is no such process
    /// or no `/proc`.
    pub fn of(pid: u32) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// This process's own figures.
    pub fn own() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/self/stat").ok()?)
    }

    /// Reads the text of a `stat` file (proc(5)).
    pub fn parse(stat: &str) -> Option<Self> {
        // The command name may hold spaces and parentheses: the fields
        // that follow start after the last ')'. `fields[0]` is field 3.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |number: usize| -> Option<u64> { fields.get(number - 3)?.parse().ok() };
        let ticks = field(14)? + field(15)?;
        Some(Self {
            cpu: Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND),
            threads: field(20)?,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * PAGE_SIZE,
        })
    }

    /// Resident memory in KiB.
    pub fn resident_kib(&self) -> u64 {
        self.resident_bytes / 1024
    }
}

/// File descriptors process `pid` has open; `None` where it cannot be read.
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// File descriptors this process has open; `None` where it cannot be read.
pub fn own_open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_is_skipped() {
        // Fields 3.. of a real line, with utime 250 and stime 50 ticks,
        // 7 threads, 1 MiB virtual, 100 resident pages.
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 7 0 123 1048576 100 18446744073709551615";
        let stats = ProcessStats::parse(stat).expect("a whole line");
        assert_eq!(stats.cpu, Duration::from_secs(3));
        assert_eq!(stats.threads, 7);
        assert_eq!(stats.virtual_bytes, 1_048_576);
        assert_eq!(stats.resident_bytes, 409_600);
        assert_eq!(stats.resident_kib(), 400);
    }

    #[test]
    fn a_cut_line_is_none() {
        assert_eq!(ProcessStats::parse("4242 (name) S 1 2 3"), None);
        assert_eq!(ProcessStats::parse("no parenthesis"), None);
    }
}
