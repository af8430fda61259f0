//! The figures the benchmarks and tests print: medians of runs, percentiles of samples, and a
//! process's memory from `/proc`.

use std::time::Duration;

/// The median of `v` (the mean of the two middle values for an even count; 0 when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The `p` quantile (0..=1, nearest rank) of `sorted`, in milliseconds; NaN when empty.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p.clamp(0.0, 1.0)).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// A `kB` field of `/proc/<pid>/status` (`field` with its colon, e.g. `"VmRSS:"` for resident
/// memory, `"VmHWM:"` for its peak), in KiB; `None` when the process or field is gone.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&v, 0.5), 51.0);
        assert_eq!(percentile_ms(&v, 0.99), 99.0);
        assert_eq!(percentile_ms(&v, 1.0), 100.0);
        assert!(percentile_ms(&[], 0.5).is_nan());
    }

    #[test]
    fn this_process_has_resident_memory() {
        assert!(proc_status_kib(std::process::id(), "VmRSS:").is_some_and(|k| k > 0));
        assert_eq!(proc_status_kib(std::process::id(), "NoSuchField:"), None);
    }
}
