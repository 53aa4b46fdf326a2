//! Consistency levels: how many replicas must answer a request.
//!
//! A level is chosen per request and resolved against the key's replica count N in
//! [`Consistency::required`], the one place where R and W are derived from N. Strictness
//! comes from the sum: a read at R and a write at W overlap in at least one home replica
//! when R + W > N, which is why `quorum` for both guarantees a read sees every write
//! acknowledged before it began.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The largest explicit replica count accepted; N itself is bounded by the cluster size.
pub const MAX_EXPLICIT_REPLICAS: u8 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Consistency {
    One,
    Two,
    Three,
    /// floor(N/2) + 1.
    Quorum,
    /// Every home replica.
    All,
    /// Writes only: succeeds once any node holds the write, even as a hint.
    Any,
    /// An explicit replica count.
    Count(u8),
}

/// Whether a level is used for a read or a write; `any` is only meaningful for writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl Consistency {
    /// The number of replica answers this level needs when a key has `n` home replicas.
    ///
    /// Refused at once, before anything is sent, when the level can never be met
    /// (more than N) or makes no sense (`any` for a read, a count of zero).
    pub fn required(self, n: usize, access: Access) -> Result<usize, Error> {
        let required = match self {
            Consistency::One | Consistency::Any => 1,
            Consistency::Two => 2,
            Consistency::Three => 3,
            Consistency::Quorum => n / 2 + 1,
            Consistency::All => n,
            Consistency::Count(count) => usize::from(count),
        };
        if self == Consistency::Any && access == Access::Read {
            return Err(Error::InvalidConsistency {
                reason: "`any` applies to writes only".into(),
            });
        }
        if required == 0 || required > n {
            return Err(Error::InvalidConsistency {
                reason: format!("{self} needs {required} replicas but keys have only N = {n}"),
            });
        }
        Ok(required)
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Consistency::One => f.write_str("one"),
            Consistency::Two => f.write_str("two"),
            Consistency::Three => f.write_str("three"),
            Consistency::Quorum => f.write_str("quorum"),
            Consistency::All => f.write_str("all"),
            Consistency::Any => f.write_str("any"),
            Consistency::Count(count) => write!(f, "{count}"),
        }
    }
}

impl FromStr for Consistency {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let level = match text.to_ascii_lowercase().as_str() {
            "one" => Consistency::One,
            "two" => Consistency::Two,
            "three" => Consistency::Three,
            "quorum" => Consistency::Quorum,
            "all" => Consistency::All,
            "any" => Consistency::Any,
            other => match other.parse::<u8>() {
                Ok(count) if (1..=MAX_EXPLICIT_REPLICAS).contains(&count) => {
                    Consistency::Count(count)
                }
                _ => {
                    return Err(Error::InvalidConsistency {
                        reason: format!(
                            "unknown consistency level '{text}' (expected one, two, three, \
                             quorum, all, any or a number from 1 to {MAX_EXPLICIT_REPLICAS})"
                        ),
                    })
                }
            },
        };
        Ok(level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_is_a_strict_majority_of_n() {
        // Goal: quorum reads and writes always overlap (R + W > N) for every N.
        for n in 1..=9 {
            let q = Consistency::Quorum.required(n, Access::Write).unwrap();
            assert!(2 * q > n, "n={n} q={q}");
            assert!(q <= n);
        }
    }

    #[test]
    fn levels_above_n_are_refused_at_once() {
        // Goal: a level that can never be met fails before any replica is asked.
        assert!(Consistency::Three.required(2, Access::Read).is_err());
        assert!(Consistency::Count(4).required(3, Access::Write).is_err());
        assert_eq!(Consistency::All.required(3, Access::Read).unwrap(), 3);
    }

    #[test]
    fn any_is_refused_for_reads() {
        // Goal: `any` has no meaning for a read and must not silently act as `one`.
        assert!(Consistency::Any.required(3, Access::Read).is_err());
        assert_eq!(Consistency::Any.required(3, Access::Write).unwrap(), 1);
    }

    #[test]
    fn parsing_accepts_names_and_numbers_and_rejects_the_rest() {
        // Goal: every documented spelling parses; unknown ones give a clear error.
        assert_eq!(
            "QUORUM".parse::<Consistency>().unwrap(),
            Consistency::Quorum
        );
        assert_eq!("2".parse::<Consistency>().unwrap(), Consistency::Count(2));
        for bad in ["", "most", "0", "-1", "300"] {
            let err = bad.parse::<Consistency>().unwrap_err();
            assert!(err.to_string().contains("consistency"), "{bad}: {err}");
        }
    }

    #[test]
    fn display_round_trips_through_parse() {
        // Goal: what the CLI prints can be typed back.
        let levels = [
            Consistency::One,
            Consistency::Two,
            Consistency::Three,
            Consistency::Quorum,
            Consistency::All,
            Consistency::Any,
            Consistency::Count(5),
        ];
        for level in levels {
            assert_eq!(level.to_string().parse::<Consistency>().unwrap(), level);
        }
    }
}
