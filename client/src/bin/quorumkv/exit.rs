//! Exit codes, the same for every command, so scripts can branch on what happened.

use quorumkv_client::Error;

pub const OK: u8 = 0;
/// The key does not exist, or `verify` found records missing or different.
pub const NOT_FOUND: u8 = 1;
/// A usage error found after parsing (clap exits with 2 itself for the rest).
pub const USAGE: u8 = 2;
/// The consistency level was not met (`unavailable` or `timeout`).
pub const CONSISTENCY: u8 = 3;
/// Anything else: no node reachable, a refused request, an unreadable file, ...
pub const OTHER: u8 = 4;

/// The code for a failed command: 3 when the cluster could not meet the level, else 4.
pub fn code_for(error: &anyhow::Error) -> u8 {
    match error.downcast_ref::<Error>() {
        Some(error) if error.is_consistency_failure() => CONSISTENCY,
        // A level the cluster can never meet (R or W above N) is the caller's mistake.
        Some(Error::InvalidConsistency { .. }) => USAGE,
        _ => OTHER,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_failures_exit_with_three_and_the_rest_with_four() {
        // Goal: scripts can tell "retry later" (3) from "something is wrong" (4).
        let unavailable = Error::Unavailable {
            required: 3,
            alive: 2,
        };
        let timeout = Error::Timeout {
            required: 2,
            acknowledged: 1,
        };
        let unreachable = Error::NoNodeReachable {
            tried: 3,
            last: "refused".into(),
        };
        assert_eq!(code_for(&unavailable.into()), CONSISTENCY);
        assert_eq!(code_for(&timeout.into()), CONSISTENCY);
        assert_eq!(code_for(&unreachable.into()), OTHER);
        assert_eq!(code_for(&anyhow::anyhow!("cannot read file")), OTHER);
    }
}
