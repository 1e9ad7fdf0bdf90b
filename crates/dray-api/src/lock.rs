//! The bodies of `/v1/locks` and their conversions.

use dray_core::lock::Holder;
use dray_core::{Invalid, Limits, LockOwner, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::convert::timestamp_string;

/// `POST /v1/locks/{name}/acquire`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LockAcquireRequest {
    /// Who asks: any text without control characters, at most 128 bytes. Acquiring again while
    /// holding the lock gives the same hold back (same token, new deadline).
    pub owner: String,
    /// How long the hold lasts unless renewed: 100 to 43200000 (12 h).
    pub ttl_ms: u64,
    /// How long to wait for a held lock (long-poll): 0 (default) to 60000. When the wait ends
    /// with the lock still held, 409 `lock-held`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    /// A semaphore's size: how many owners may hold the lock at once, 1 (default) to 1000. Set
    /// by the acquire that finds the lock free; later acquires must ask with the same size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permits: Option<u32>,
}

impl LockAcquireRequest {
    pub fn owner(&self) -> Result<LockOwner, Invalid> {
        LockOwner::new(&self.owner)
    }

    pub fn permits(&self) -> Result<u32, Invalid> {
        let permits = self.permits.unwrap_or(1);
        dray_core::lock::permits_validate(permits)?;
        Ok(permits)
    }

    pub fn wait_ms(&self) -> Result<u64, Invalid> {
        let wait_ms = self.wait_ms.unwrap_or(0);
        dray_core::limits::check_range("wait_ms", wait_ms, 0, Limits::LOCK_WAIT_MS_MAX, " ms")?;
        Ok(wait_ms)
    }
}

/// `POST /v1/locks/{name}/renew`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LockRenewRequest {
    pub owner: String,
    /// The hold's token, as the acquire answered it.
    pub fencing_token: u64,
    /// The hold's new length from now; default the TTL it was acquired (or last renewed) with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// `POST /v1/locks/{name}/release`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LockReleaseRequest {
    pub owner: String,
    pub fencing_token: u64,
}

/// A granted hold: the answer to acquire and renew.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LockGrant {
    /// Strictly increasing per lock name, across restarts and nodes. Hand it to the resource the
    /// lock protects (`<schema>.fence(resource, token)` in PostgreSQL mode), which must refuse
    /// tokens older than the newest it has seen.
    pub fencing_token: u64,
    /// RFC 3339, the store's clock; for display. Reason with `ttl_ms`.
    pub deadline: String,
    /// The hold's length from now (the time left when the store decided).
    pub ttl_ms: u64,
    /// `false` when the owner already held the lock and got the same hold back.
    pub new: bool,
}

impl LockGrant {
    pub fn of(granted: &dray_store::LockGranted) -> LockGrant {
        LockGrant {
            fencing_token: granted.holder.token.0,
            deadline: timestamp_string(granted.holder.deadline),
            ttl_ms: granted.left_ms(),
            new: granted.new,
        }
    }
}

/// The answer to a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LockReleased {
    /// `true`: the hold was live and is gone. `false`: the lock was already free for this owner
    /// (released before, or its TTL passed): harmless.
    pub released: bool,
}

/// One hold, as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LockHolder {
    pub owner: String,
    pub fencing_token: u64,
    /// RFC 3339, the store's clock.
    pub acquired_at: String,
    /// RFC 3339, the store's clock.
    pub deadline: String,
    /// Time left when the store read it.
    pub left_ms: u64,
    /// The TTL it was acquired or last renewed with.
    pub ttl_ms: u64,
}

impl LockInfo {
    pub fn of(state: &dray_store::LockState, waiters: u64) -> LockInfo {
        LockInfo {
            name: state.lock.name.as_str().to_owned(),
            permits: state.lock.permits,
            holders: state.lock.holders.iter().map(|h| LockHolder::of(h, state.now)).collect(),
            waiters,
        }
    }
}

impl LockHolder {
    pub fn of(h: &Holder, now: Timestamp) -> LockHolder {
        LockHolder {
            owner: h.owner.as_str().to_owned(),
            fencing_token: h.token.0,
            acquired_at: timestamp_string(h.acquired_at),
            deadline: timestamp_string(h.deadline),
            left_ms: h.deadline.ms_since(now),
            ttl_ms: h.ttl_ms,
        }
    }
}

/// A held lock: `GET /v1/locks/{name}` and each entry of `GET /v1/locks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LockInfo {
    pub name: String,
    pub permits: u32,
    /// Live holds, oldest first (by token).
    pub holders: Vec<LockHolder>,
    /// Acquires waiting for this lock on the node that answered (node-local).
    pub waiters: u64,
}

/// `GET /v1/locks`: held locks by name, one page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LockList {
    pub locks: Vec<LockInfo>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `?after=&limit=` on `GET /v1/locks`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LockQuery {
    /// List names after this one (the previous page's `next`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// 1 to 1000; default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl LockQuery {
    pub const LIMIT_DEFAULT: usize = 100;

    pub fn limit(&self) -> Result<usize, Invalid> {
        let limit = self.limit.unwrap_or(Self::LIMIT_DEFAULT);
        dray_core::limits::check_range("limit", limit, 1, Limits::PAGE_LOCKS_MAX, "")?;
        Ok(limit)
    }
}

/// `?fencing_token=N` on `DELETE /v1/locks/{name}`: the one hold to end; every hold without it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LockForceQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fencing_token: Option<u64>,
}

/// The answer to `DELETE /v1/locks/{name}`: the holds an operator ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LockForceReleased {
    pub released: Vec<LockHolder>,
}
