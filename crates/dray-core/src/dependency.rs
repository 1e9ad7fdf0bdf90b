//! Job dependencies: a job that names others in `depends_on` waits `blocked` until they finish.
//!
//! The rules are pure functions over the dependencies' states, so both stores decide alike:
//! [`verdict`] says whether a blocked job keeps waiting, is released, or ends because a
//! dependency failed; [`check_batch`] refuses a batch whose dependencies among its own jobs form
//! a cycle or point outside it.

use crate::ids::JobId;
use crate::job::JobState;
use crate::limits::{Invalid, Limits};

/// What a job depends on, as an insert names it: a job that exists, or another job of the same
/// insert batch by its position (the API turns client keys into positions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dependency {
    Job(JobId),
    Batch(usize),
}

/// What a blocked job does when a dependency ends dead or cancelled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnDependencyFailure {
    /// The dependent ends cancelled, naming the dependency; its own dependents follow.
    #[default]
    Cancel,
    /// The dependent runs once every dependency finished, whatever their end, and sees each
    /// dependency's state with its lease.
    Run,
}

impl OnDependencyFailure {
    pub const ALL: [OnDependencyFailure; 2] = [OnDependencyFailure::Cancel, OnDependencyFailure::Run];

    pub fn as_str(self) -> &'static str {
        match self {
            OnDependencyFailure::Cancel => "cancel",
            OnDependencyFailure::Run => "run",
        }
    }

    pub fn parse(s: &str) -> Option<OnDependencyFailure> {
        OnDependencyFailure::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// What a blocked job does now, given its dependencies' states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A dependency has not finished yet.
    Wait,
    /// Every dependency finished as the policy requires: the job may run.
    Release,
    /// A dependency ended dead or cancelled (or no longer exists) and the policy is `cancel`.
    Fail { dependency: JobId, state: Option<JobState> },
}

/// Decides what a blocked job does. `states` gives each dependency's state, `None` for one that
/// no longer exists (discarded or pruned), which counts as finished without completing.
///
/// With `cancel`, the first failed dependency ends the job at once, without waiting for the
/// others; with `run`, the job waits for every dependency to finish.
pub fn verdict(policy: OnDependencyFailure, states: impl IntoIterator<Item = (JobId, Option<JobState>)>) -> Verdict {
    let mut pending = false;
    for (dependency, state) in states {
        match state {
            Some(JobState::Completed) => {}
            Some(s) if !s.is_finished() => pending = true,
            failed => {
                if policy == OnDependencyFailure::Cancel {
                    return Verdict::Fail { dependency, state: failed };
                }
            }
        }
    }
    if pending { Verdict::Wait } else { Verdict::Release }
}

/// Why a dependent ended cancelled: the text kept as its last error and in its history.
pub fn failure_reason(dependency: JobId, state: Option<JobState>) -> String {
    match state {
        Some(state) => format!("dependency {dependency} ended {state}"),
        None => format!("dependency {dependency} no longer exists"),
    }
}

/// Checks the dependencies of one insert batch, given each job's `depends_on`: each list within
/// `Limits::DEPENDS_ON_MAX`, no job depending on itself or twice on the same job, positions
/// inside the batch, and no cycle among the batch's jobs. Refusals name the field
/// (`jobs[3].depends_on[1]`).
pub fn check_batch(depends_on: &[&[Dependency]]) -> Result<(), Invalid> {
    let n = depends_on.len();
    for (i, deps) in depends_on.iter().enumerate() {
        if deps.len() > Limits::DEPENDS_ON_MAX {
            return Err(Invalid::new(
                format!("jobs[{i}].depends_on"),
                format!("names {} jobs; the limit is {}", deps.len(), Limits::DEPENDS_ON_MAX),
            ));
        }
        for (j, dep) in deps.iter().enumerate() {
            let field = || format!("jobs[{i}].depends_on[{j}]");
            match *dep {
                Dependency::Batch(k) if k >= n => {
                    return Err(Invalid::new(field(), format!("names job {k} of a batch of {n}")));
                }
                Dependency::Batch(k) if k == i => return Err(Invalid::new(field(), "names the job itself")),
                _ => {}
            }
            if deps[..j].contains(dep) {
                return Err(Invalid::new(field(), "names the same job twice"));
            }
        }
    }
    // A cycle can only run through jobs of the batch (an existing job depends on nothing new):
    // Kahn's algorithm over the batch-internal edges leaves the jobs of a cycle unvisited.
    let mut waiting_on = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, deps) in depends_on.iter().enumerate() {
        for dep in deps.iter() {
            if let Dependency::Batch(k) = *dep {
                waiting_on[i] += 1;
                dependents[k].push(i);
            }
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| waiting_on[i] == 0).collect();
    let mut visited = 0;
    while let Some(k) = ready.pop() {
        visited += 1;
        for &i in &dependents[k] {
            waiting_on[i] -= 1;
            if waiting_on[i] == 0 {
                ready.push(i);
            }
        }
    }
    if visited < n {
        let i = (0..n).find(|&i| waiting_on[i] > 0).expect("an unvisited job waits");
        return Err(Invalid::new(format!("jobs[{i}].depends_on"), "forms a cycle with other jobs of the batch"));
    }
    Ok(())
}

/// The batch's positions in an order where every job comes after the batch jobs it depends on
/// (for a batch [`check_batch`] accepted), earlier positions first among the unordered.
pub fn batch_order(depends_on: &[&[Dependency]]) -> Vec<usize> {
    let n = depends_on.len();
    let mut order = Vec::with_capacity(n);
    let mut placed = vec![false; n];
    // Depth-first from each position in turn: a job is placed after its batch dependencies.
    for start in 0..n {
        let mut stack = vec![(start, false)];
        while let Some((i, expanded)) = stack.pop() {
            if placed[i] {
                continue;
            }
            if expanded {
                placed[i] = true;
                order.push(i);
                continue;
            }
            stack.push((i, true));
            for dep in depends_on[i].iter().rev() {
                if let Dependency::Batch(k) = *dep
                    && !placed[k]
                {
                    stack.push((k, false));
                }
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: JobId = JobId(1);
    const B: JobId = JobId(2);

    #[test]
    fn cancel_fails_at_the_first_failed_dependency_without_waiting() {
        let states = [(A, Some(JobState::Running)), (B, Some(JobState::Dead))];
        assert_eq!(
            verdict(OnDependencyFailure::Cancel, states),
            Verdict::Fail { dependency: B, state: Some(JobState::Dead) }
        );
        assert_eq!(verdict(OnDependencyFailure::Run, states), Verdict::Wait);
    }

    #[test]
    fn release_needs_every_dependency_finished() {
        let done = [(A, Some(JobState::Completed)), (B, Some(JobState::Completed))];
        assert_eq!(verdict(OnDependencyFailure::Cancel, done), Verdict::Release);
        let one_left = [(A, Some(JobState::Completed)), (B, Some(JobState::Retrying))];
        assert_eq!(verdict(OnDependencyFailure::Cancel, one_left), Verdict::Wait);
        let blocked = [(A, Some(JobState::Blocked))];
        assert_eq!(verdict(OnDependencyFailure::Run, blocked), Verdict::Wait);
        let mixed = [(A, Some(JobState::Cancelled)), (B, None)];
        assert_eq!(verdict(OnDependencyFailure::Run, mixed), Verdict::Release);
        assert_eq!(
            verdict(OnDependencyFailure::Cancel, mixed),
            Verdict::Fail { dependency: A, state: Some(JobState::Cancelled) }
        );
    }

    #[test]
    fn batch_checks_name_the_field() {
        let b = Dependency::Batch;
        let err = |deps: &[&[Dependency]]| check_batch(deps).unwrap_err().to_string();
        assert!(err(&[&[b(0)]]).contains("jobs[0].depends_on[0]"));
        assert!(err(&[&[], &[b(5)]]).contains("jobs[1].depends_on[0]"));
        assert!(err(&[&[], &[b(0), b(0)]]).contains("jobs[1].depends_on[1]"));
        assert!(err(&[&[b(2)], &[b(0)], &[b(1)]]).contains("cycle"));
        let many = vec![Dependency::Job(A); Limits::DEPENDS_ON_MAX + 1];
        assert!(err(&[&many]).contains(&Limits::DEPENDS_ON_MAX.to_string()));
        assert!(check_batch(&[&[b(1)], &[], &[b(0), b(1), Dependency::Job(A)]]).is_ok());
    }

    #[test]
    fn batch_order_puts_dependencies_first() {
        let b = Dependency::Batch;
        let deps: [&[Dependency]; 4] = [&[b(3)], &[], &[b(0), b(1)], &[b(1)]];
        let order = batch_order(&deps);
        let pos = |i: usize| order.iter().position(|&x| x == i).unwrap();
        assert_eq!(order.len(), 4);
        assert!(pos(3) < pos(0) && pos(1) < pos(3) && pos(0) < pos(2) && pos(1) < pos(2));
    }
}
