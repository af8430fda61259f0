//! The restart rule of a process app (API.md "Lifecycle"), as a pure state machine: no clock, no
//! process, so its tests need neither. The supervisor (`supervisor.rs`) feeds it each exit and
//! how long the run lasted, and does what it decides.
//!
//! Rule: `always` restarts after any exit, `on-failure` after a non-zero exit or a signal (an
//! exit 0 is `stopped`), `never` restarts nothing (exit 0 → `stopped`, else `failed`). The delay
//! before a restart starts at [`FIRST_DELAY`] and doubles per consecutive restart up to
//! [`MAX_DELAY`]; a run that lasted [`STABLE_RUN`] or more counts as healthy and resets it.

use std::time::Duration;

use super::manifest::Restart;

/// Delay before the first restart.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// Longest delay between restarts.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// A run at least this long resets the delay: the app was not crash-looping.
pub const STABLE_RUN: Duration = Duration::from_secs(60);

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exit status 0.
    Success,
    /// A non-zero status, a signal, or a failure to start at all.
    Failure,
}

/// What to do after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start again after this delay; it counts as a restart.
    RestartAfter(Duration),
    /// Done, state `stopped`.
    Stopped,
    /// Done, state `failed`.
    Failed,
}

/// The restart state of one app between operator actions.
#[derive(Debug, Clone)]
pub struct RestartRule {
    policy: Restart,
    next_delay: Duration,
}

impl RestartRule {
    pub fn new(policy: Restart) -> Self {
        Self {
            policy,
            next_delay: FIRST_DELAY,
        }
    }

    /// Decides after a run that lasted `ran` and ended with `exit`.
    pub fn on_exit(&mut self, exit: Exit, ran: Duration) -> Decision {
        if ran >= STABLE_RUN {
            self.next_delay = FIRST_DELAY;
        }
        let restart = match (self.policy, exit) {
            (Restart::Always, _) | (Restart::OnFailure, Exit::Failure) => true,
            (Restart::OnFailure, Exit::Success) | (Restart::Never, _) => false,
        };
        if !restart {
            return match exit {
                Exit::Success => Decision::Stopped,
                Exit::Failure => Decision::Failed,
            };
        }
        let delay = self.next_delay;
        self.next_delay = (delay * 2).min(MAX_DELAY);
        Decision::RestartAfter(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Duration = Duration::from_millis(10);

    #[test]
    fn crash_loops_back_off_doubling_to_the_cap() {
        let mut rule = RestartRule::new(Restart::OnFailure);
        let delays: Vec<u64> = (0..9)
            .map(|_| match rule.on_exit(Exit::Failure, QUICK) {
                Decision::RestartAfter(d) => d.as_secs(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn a_stable_run_resets_the_delay() {
        let mut rule = RestartRule::new(Restart::Always);
        for _ in 0..5 {
            rule.on_exit(Exit::Failure, QUICK);
        }
        assert_eq!(
            rule.on_exit(Exit::Success, STABLE_RUN),
            Decision::RestartAfter(FIRST_DELAY)
        );
    }

    #[test]
    fn policies() {
        let mut on_failure = RestartRule::new(Restart::OnFailure);
        assert_eq!(on_failure.on_exit(Exit::Success, QUICK), Decision::Stopped);
        let mut never = RestartRule::new(Restart::Never);
        assert_eq!(never.on_exit(Exit::Success, QUICK), Decision::Stopped);
        assert_eq!(never.on_exit(Exit::Failure, QUICK), Decision::Failed);
        let mut always = RestartRule::new(Restart::Always);
        assert_eq!(
            always.on_exit(Exit::Success, QUICK),
            Decision::RestartAfter(FIRST_DELAY)
        );
    }
}
