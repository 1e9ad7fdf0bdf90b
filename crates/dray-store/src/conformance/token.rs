//! The conformance suite of [`TokenStore`]: every store that files API tokens runs it, through
//! `dray_store::token_conformance_suite!(harness)` (the same [`Harness`] as the job suite, whose
//! store must also implement [`TokenStore`]).

use dray_core::{Scope, Timestamp};

use super::{Harness, T0};
use crate::{Error, TOKENS_MAX, TokenInsert, TokenRecord, TokenRevoke, TokenStore};

/// A valid record with the id and scopes given, created at `T0`.
pub fn token_record(id: &str, scopes: &[&str]) -> TokenRecord {
    TokenRecord {
        id: id.to_owned(),
        name: format!("token {id}"),
        scopes: scopes.iter().map(|s| Scope::parse(s).expect("a valid scope")).collect(),
        hash: hash_of(id),
        created_at: T0,
        expires_at: None,
        revoked_at: None,
    }
}

/// A hash that differs per id, so a store that mixed records up is caught.
fn hash_of(id: &str) -> [u8; 32] {
    let mut hash = [0u8; 32];
    for (i, b) in id.bytes().cycle().take(32).enumerate() {
        hash[i] = b.wrapping_mul(31).wrapping_add(i as u8);
    }
    hash
}

async fn insert<S: TokenStore>(store: &S, token: TokenRecord) -> Result<(), Error> {
    store.token_insert(TokenInsert { now: T0, token }).await
}

pub async fn token_insert_get_list<H: Harness>(mut h: H)
where
    H::Store: TokenStore,
{
    let store = h.open().await;
    assert_eq!(store.token_list().await.unwrap(), vec![], "a new store holds no tokens");
    assert_eq!(store.token_get("00000000000000aa").await.unwrap(), None);

    let mut rich = token_record("00000000000000bb", &["enqueue:billing.*", "read", "admin:team:a*"]);
    rich.name = "billing producer, ünïcode".into();
    rich.created_at = Timestamp(T0.0 + 5);
    rich.expires_at = Some(Timestamp(T0.0 + 86_400_000));
    let plain = token_record("00000000000000aa", &["work"]);
    insert(&store, rich.clone()).await.unwrap();
    insert(&store, plain.clone()).await.unwrap();

    assert_eq!(store.token_get(&rich.id).await.unwrap(), Some(rich.clone()), "every field comes back as written");
    assert_eq!(store.token_get(&plain.id).await.unwrap(), Some(plain.clone()));
    // Oldest first: `plain` was created at T0, `rich` 5 ms later.
    assert_eq!(store.token_list().await.unwrap(), vec![plain, rich]);
}

pub async fn token_insert_refuses_invalid_and_duplicates<H: Harness>(mut h: H)
where
    H::Store: TokenStore,
{
    let store = h.open().await;
    let good = token_record("0123456789abcdef", &["read"]);
    insert(&store, good.clone()).await.unwrap();

    let field = |r: Result<(), Error>| match r {
        Err(Error::Invalid(invalid)) => invalid.field,
        other => panic!("expected Invalid, got {other:?}"),
    };
    let mut dup = token_record("0123456789abcdef", &["admin"]);
    dup.name = "another".into();
    assert_eq!(field(insert(&store, dup).await), "id", "an id is never reused");
    assert_eq!(field(insert(&store, token_record("0123456789ABCDEF", &["read"])).await), "id");
    assert_eq!(field(insert(&store, token_record("short", &["read"])).await), "id");
    let mut unnamed = token_record("1111111111111111", &["read"]);
    unnamed.name = String::new();
    assert_eq!(field(insert(&store, unnamed).await), "name");
    assert_eq!(field(insert(&store, token_record("2222222222222222", &[])).await), "scopes");

    // Nothing refused was filed, and the original is untouched.
    assert_eq!(store.token_list().await.unwrap(), vec![good]);
}

pub async fn token_revoke_is_durable_and_idempotent<H: Harness>(mut h: H)
where
    H::Store: TokenStore,
{
    let mut store = h.open().await;
    let a = token_record("aaaaaaaaaaaaaaaa", &["enqueue"]);
    let b = token_record("bbbbbbbbbbbbbbbb", &["read:q*"]);
    insert(&store, a.clone()).await.unwrap();
    insert(&store, b.clone()).await.unwrap();

    let at = Timestamp(T0.0 + 1_000);
    let revoked = store.token_revoke(TokenRevoke { now: at, id: a.id.clone() }).await.unwrap();
    let expected = TokenRecord { revoked_at: Some(at), ..a.clone() };
    assert_eq!(revoked, Some(expected.clone()));
    assert!(!expected.is_live(at));
    // Again, later: the first revocation time stays.
    let again = store.token_revoke(TokenRevoke { now: Timestamp(at.0 + 1), id: a.id.clone() }).await.unwrap();
    assert_eq!(again, Some(expected.clone()));
    assert_eq!(store.token_revoke(TokenRevoke { now: at, id: "cccccccccccccccc".into() }).await.unwrap(), None);

    store = h.restart(store).await;
    assert_eq!(store.token_get(&a.id).await.unwrap(), Some(expected.clone()), "revocation survives a restart");
    assert_eq!(store.token_get(&b.id).await.unwrap(), Some(b.clone()));
    assert_eq!(store.token_list().await.unwrap(), vec![expected, b]);
}

pub async fn token_count_bounded<H: Harness>(mut h: H)
where
    H::Store: TokenStore,
{
    let store = h.open().await;
    // Eight writers at once, so group commit (or a pool) shares the cost of durability.
    const WRITERS: usize = 8;
    let writer = |w: usize| {
        let store = &store;
        async move {
            for i in (w..TOKENS_MAX).step_by(WRITERS) {
                insert(store, token_record(&format!("{i:016x}"), &["read"])).await.unwrap();
            }
        }
    };
    tokio::join!(writer(0), writer(1), writer(2), writer(3), writer(4), writer(5), writer(6), writer(7));
    match insert(&store, token_record("ffffffffffffffff", &["read"])).await {
        Err(Error::Invalid(invalid)) => {
            assert_eq!(invalid.field, "tokens");
            assert!(invalid.message.contains(&TOKENS_MAX.to_string()), "{}", invalid.message);
        }
        other => panic!("expected the bound, got {other:?}"),
    }
    assert_eq!(store.token_list().await.unwrap().len(), TOKENS_MAX);
}

/// Expands to one `#[tokio::test]` per test of the token suite, each calling
/// `dray_store::conformance::<name>(<harness expression>)`.
#[macro_export]
macro_rules! token_conformance_suite {
    ($make:expr) => {
        $crate::__conformance_tests! {
            $make;
            token_insert_get_list,
            token_insert_refuses_invalid_and_duplicates,
            token_revoke_is_durable_and_idempotent,
            token_count_bounded,
        }
    };
}
