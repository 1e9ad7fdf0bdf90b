//! Durable steps inside one job: named, memoized results an attempt records as it goes, handed to
//! every later attempt, so a job that crashed at step 14 resumes at step 14 with the results of
//! steps 1 to 13 instead of running them again.
//!
//! A job's [`Steps`] live on the [`Job`](crate::Job), never in its [`JobStatus`](crate::JobStatus):
//! the status is logged whole on every change, steps are logged one at a time when recorded. The
//! first record of a name wins: recording a name again changes nothing and answers with the
//! result already recorded (a worker retrying a lost reply gets the memoized value). Steps are
//! kept across failed attempts, lease expiries and redrives, and deleted with the job.
//!
//! This module owns the step's rules ([`validate`] for one step, [`Steps::room_for`] for the
//! job's bounds); [`crate::transition`] applies them for `Event::Step`.

use std::sync::Arc;

use crate::job::Payload;
use crate::limits::{Invalid, Limits, check_bytes};
use crate::time::Timestamp;

/// One recorded step: its name, its result (JSON text), when it was recorded (server clock) and
/// by which attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub name: Box<str>,
    pub result: Payload,
    pub at: Timestamp,
    pub attempt: u32,
}

impl Step {
    /// The bytes this step counts towards `Limits::STEPS_BYTES_PER_JOB_MAX`: its name and result.
    pub fn bytes(&self) -> usize {
        self.name.len() + self.result.len()
    }
}

/// A job's recorded steps, in recording order, with their count and bytes. Cloning shares the
/// list (a job is cloned whole to be read; its steps are copied only when one is added to a
/// shared list).
///
/// A store that keeps steps outside the job's row (PostgreSQL) may build a partial view for a
/// transition with [`Steps::view`]: the count and bytes of all steps, and only the step named in
/// the event (if it is recorded). Every rule here reads only those.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Steps {
    list: Arc<Vec<Step>>,
    /// Steps recorded, equal to `list.len()` except in a partial view.
    count: usize,
    /// The bytes of every step recorded ([`Step::bytes`]).
    bytes: usize,
}

impl Steps {
    /// Every step of a job, in recording order. Panics if two share a name: a store read back
    /// steps its own writes could not have made (paired assertion).
    pub fn from_steps(list: Vec<Step>) -> Steps {
        let mut names: Vec<&str> = list.iter().map(|s| &*s.name).collect();
        names.sort_unstable();
        assert!(names.windows(2).all(|w| w[0] != w[1]), "a job's steps have unique names");
        let bytes = list.iter().map(Step::bytes).sum();
        Steps { count: list.len(), bytes, list: Arc::new(list) }
    }

    /// A partial view for one transition: `count` steps of `bytes` bytes are recorded, and
    /// `found` is the recorded step of the name the event carries, if there is one.
    pub fn view(count: usize, bytes: usize, found: Option<Step>) -> Steps {
        let list: Vec<Step> = found.into_iter().collect();
        assert!(
            list.len() <= count && list.iter().map(Step::bytes).sum::<usize>() <= bytes,
            "a view within its totals"
        );
        Steps { list: Arc::new(list), count, bytes }
    }

    /// The recorded step of this name.
    pub fn get(&self, name: &str) -> Option<&Step> {
        self.list.iter().find(|s| &*s.name == name)
    }

    /// The steps held, in recording order (all of them, except in a [`Steps::view`]).
    pub fn iter(&self) -> impl Iterator<Item = &Step> {
        self.list.iter()
    }

    /// Steps recorded.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The bytes of every step recorded: names and results.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether a new step `name` with `result` fits the job's bounds: at most
    /// `Limits::STEPS_PER_JOB_MAX` steps and `Limits::STEPS_BYTES_PER_JOB_MAX` bytes. The
    /// refusal names the field of the request that breaks the bound.
    pub fn room_for(&self, name: &str, result: &Payload) -> Result<(), Invalid> {
        if self.count >= Limits::STEPS_PER_JOB_MAX {
            return Err(Invalid::new(
                "name",
                format!(
                    "is a new step, but the job holds {} steps already; the limit is {} steps per job",
                    self.count,
                    Limits::STEPS_PER_JOB_MAX
                ),
            ));
        }
        let after = self.bytes + name.len() + result.len();
        if after > Limits::STEPS_BYTES_PER_JOB_MAX {
            return Err(Invalid::new(
                "result",
                format!(
                    "would bring the job's steps (names and results) to {after} bytes; the limit is {} bytes per job",
                    Limits::STEPS_BYTES_PER_JOB_MAX
                ),
            ));
        }
        Ok(())
    }

    /// Appends a step. Panics if its name is recorded already (first write wins: the transition
    /// never asks for that).
    pub fn push(&mut self, step: Step) {
        assert!(self.get(&step.name).is_none(), "step {:?} is recorded already", step.name);
        self.count += 1;
        self.bytes += step.bytes();
        Arc::make_mut(&mut self.list).push(step);
    }
}

/// Checks one step as a worker sends it: `name` is 1 to `Limits::STEP_NAME_BYTES_MAX` bytes
/// without control characters, `result` is one JSON value (as `json::check` reads it) of at most
/// `Limits::STEP_RESULT_BYTES_MAX` bytes. Stores call it before the transition, outside any lock:
/// it reads the whole result.
pub fn validate(name: &str, result: &Payload) -> Result<(), Invalid> {
    if name.is_empty() {
        return Err(Invalid::new("name", "must not be empty"));
    }
    check_bytes("name", name.len(), Limits::STEP_NAME_BYTES_MAX)?;
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(Invalid::new("name", format!("contains the control character {c:?}; none are allowed")));
    }
    check_bytes("result", result.len(), Limits::STEP_RESULT_BYTES_MAX)?;
    crate::json::check(result.as_bytes()).map_err(|e| Invalid::new("result", format!("is not a JSON value: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, result: &str) -> Step {
        Step { name: name.into(), result: Payload::new(result.as_bytes().to_vec()), at: Timestamp(1), attempt: 1 }
    }

    fn payload(s: &str) -> Payload {
        Payload::new(s.as_bytes().to_vec())
    }

    #[track_caller]
    fn check(name: &str, result: &str, refused: Option<(&str, &str)>) {
        match (validate(name, &payload(result)), refused) {
            (Ok(()), None) => {}
            (Err(e), Some((field, text))) => {
                assert_eq!(e.field, field, "{e}");
                assert!(e.message.contains(text), "{e:?} should say {text:?}");
            }
            (got, want) => panic!("validate({name:?}, {result:?}): got {got:?}, want a refusal {want:?}"),
        }
    }

    #[test]
    fn validate_names_the_field_and_the_limit() {
        check("fetch", "{}", None);
        check("ünïcode step 1", "[1,2]", None);
        check(&"n".repeat(Limits::STEP_NAME_BYTES_MAX), "null", None);
        check("", "1", Some(("name", "must not be empty")));
        check(&"n".repeat(Limits::STEP_NAME_BYTES_MAX + 1), "1", Some(("name", "the limit is 256")));
        check("a\nb", "1", Some(("name", "control character")));
        check("a\u{7f}", "1", Some(("name", "control character")));
        check("s", "", Some(("result", "not a JSON value")));
        check("s", "{", Some(("result", "not a JSON value")));
        check("s", "1e400", Some(("result", "not a JSON value")));
        check("s", "\"\\ud800\"", Some(("result", "not a JSON value")));
        let big = format!("\"{}\"", "x".repeat(Limits::STEP_RESULT_BYTES_MAX - 1));
        check("s", &big, Some(("result", "the limit is 262144")));
        let fits = format!("\"{}\"", "x".repeat(Limits::STEP_RESULT_BYTES_MAX - 2));
        check("s", &fits, None);
    }

    #[test]
    fn steps_count_bytes_and_keep_order() {
        let mut steps = Steps::default();
        assert!(steps.is_empty());
        steps.push(step("b", "1"));
        steps.push(step("a", "22"));
        assert_eq!(steps.len(), 2);
        assert_eq!(steps.bytes(), 2 + 3);
        assert_eq!(steps.iter().map(|s| &*s.name).collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(steps.get("a").map(|s| s.result.as_bytes()), Some(&b"22"[..]));
        assert_eq!(steps.get("c"), None);
        assert_eq!(Steps::from_steps(vec![step("b", "1"), step("a", "22")]), steps);
    }

    #[test]
    fn a_shared_list_is_copied_on_push() {
        let mut steps = Steps::from_steps(vec![step("a", "1")]);
        let copy = steps.clone();
        steps.push(step("b", "2"));
        assert_eq!(copy.len(), 1);
        assert_eq!(copy.iter().count(), 1);
        assert_eq!(steps.len(), 2);
    }

    #[test]
    #[should_panic(expected = "recorded already")]
    fn pushing_a_recorded_name_is_a_bug() {
        let mut steps = Steps::from_steps(vec![step("a", "1")]);
        steps.push(step("a", "2"));
    }

    #[test]
    fn room_for_counts_and_bytes() {
        let many: Vec<Step> = (0..Limits::STEPS_PER_JOB_MAX).map(|i| step(&format!("s{i}"), "1")).collect();
        let full = Steps::from_steps(many);
        let e = full.room_for("one more", &payload("1")).unwrap_err();
        assert_eq!(e.field, "name");
        assert!(e.message.contains("the limit is 1000 steps per job"), "{e}");

        // A view holding only the totals decides the same as the whole list.
        let view = Steps::view(Limits::STEPS_PER_JOB_MAX, full.bytes(), None);
        assert_eq!(view.room_for("one more", &payload("1")), Err(e));

        let nearly = Steps::view(3, Limits::STEPS_BYTES_PER_JOB_MAX - 10, None);
        assert_eq!(nearly.room_for("abcde", &payload("12345")), Ok(()));
        let e = nearly.room_for("abcde", &payload("123456")).unwrap_err();
        assert_eq!(e.field, "result");
        assert!(e.message.contains("8388609 bytes; the limit is 8388608 bytes per job"), "{e}");
    }
}
