//! The auth store's rules, one row per etcd behaviour.

use ferrokv_proto::authpb::{permission::Type, Permission};
use ferrokv_proto::etcdserverpb::{AuthUserAddRequest, PutRequest, RangeRequest};

use super::*;

fn user(d: &mut AuthData, name: &str) {
    d.user_add(&AuthUserAddRequest {
        name: name.into(),
        hashed_password: "h".into(),
        ..Default::default()
    })
    .unwrap();
}

fn perm(t: Type, key: &[u8], end: &[u8]) -> Permission {
    Permission {
        perm_type: t as i32,
        key: key.to_vec(),
        range_end: end.to_vec(),
    }
}

#[test]
fn enable_needs_root_with_root_role() {
    let mut d = AuthData::default();
    assert_eq!(d.revision, 1);
    assert!(matches!(d.enable(), Err(Error::RootUserNotExist)));
    user(&mut d, "root");
    assert!(matches!(d.enable(), Err(Error::RootRoleNotExist)));
    d.user_grant_role("root", "root").unwrap();
    d.enable().unwrap();
    assert!(d.enabled);
    assert!(matches!(d.user_delete("root"), Err(Error::InvalidAuthMgmt)));
    assert!(matches!(
        d.user_revoke_role("root", "root"),
        Err(Error::InvalidAuthMgmt)
    ));
    assert_eq!(d.revision, 3, "enabling does not bump the revision");
}

#[test]
fn management_errors() {
    let mut d = AuthData::default();
    user(&mut d, "a");
    assert!(matches!(
        d.user_add(&AuthUserAddRequest {
            name: "a".into(),
            ..Default::default()
        }),
        Err(Error::UserExists)
    ));
    assert!(matches!(
        d.user_add(&AuthUserAddRequest::default()),
        Err(Error::UserEmpty)
    ));
    assert!(matches!(
        d.user_grant_role("a", "r"),
        Err(Error::RoleNotFound)
    ));
    assert!(matches!(
        d.user_grant_role("b", "r"),
        Err(Error::UserNotFound)
    ));
    d.role_add("r").unwrap();
    assert!(matches!(d.role_add("r"), Err(Error::RoleExists)));
    assert!(matches!(d.role_add(""), Err(Error::RoleEmpty)));
    assert!(matches!(
        d.user_revoke_role("a", "r"),
        Err(Error::RoleNotGranted)
    ));
    assert!(matches!(
        d.role_revoke_permission("r", b"k", b""),
        Err(Error::PermissionNotGranted)
    ));
    assert!(matches!(
        d.role_grant_permission("r", None),
        Err(Error::PermissionNotGiven)
    ));
    assert!(matches!(
        d.role_grant_permission("r", Some(&perm(Type::Read, b"b", b"a"))),
        Err(Error::InvalidAuthMgmt)
    ));
    d.user_grant_role("a", "r").unwrap();
    d.role_delete("r").unwrap();
    assert!(
        d.user_get("a").unwrap().is_empty(),
        "deleting a role revokes it"
    );
}

#[test]
fn ranges_are_covered_by_the_union_of_grants() {
    let mut d = AuthData::default();
    user(&mut d, "root");
    d.user_grant_role("root", "root").unwrap();
    user(&mut d, "alice");
    d.role_add("r").unwrap();
    d.role_grant_permission("r", Some(&perm(Type::Read, b"a", b"c")))
        .unwrap();
    d.role_grant_permission("r", Some(&perm(Type::Readwrite, b"c", b"e")))
        .unwrap();
    d.role_grant_permission("r", Some(&perm(Type::Write, b"x", b"\0")))
        .unwrap();
    d.user_grant_role("alice", "r").unwrap();
    d.enable().unwrap();
    let v = AuthView {
        data: &d,
        user: "alice",
    };
    assert!(v.range(b"a", b"").is_ok());
    assert!(v.range(b"a", b"e").is_ok(), "two adjacent grants cover it");
    assert!(matches!(v.range(b"a", b"f"), Err(Error::PermissionDenied)));
    assert!(matches!(v.write(b"a", b""), Err(Error::PermissionDenied)));
    assert!(v.write(b"d", b"").is_ok());
    assert!(v.write(b"zzz", b"\0").is_ok());
    assert!(matches!(v.range(b"x", b""), Err(Error::PermissionDenied)));
    assert!(matches!(
        v.put(&PutRequest {
            key: b"x".to_vec(),
            prev_kv: true,
            ..Default::default()
        }),
        Err(Error::PermissionDenied)
    ));
    assert!(matches!(v.admin(), Err(Error::PermissionDenied)));
    let anon = AuthView { data: &d, user: "" };
    assert!(matches!(
        anon.range_request(&RangeRequest::default()),
        Err(Error::UserEmpty)
    ));
    let root = AuthView {
        data: &d,
        user: "root",
    };
    assert!(root.range(b"", b"\0").is_ok() && root.admin().is_ok());
}

#[test]
fn state_round_trips_and_tokens_follow_it() {
    let mut d = AuthData::default();
    user(&mut d, "root");
    d.user_grant_role("root", "root").unwrap();
    d.enable().unwrap();
    let back = AuthData::decode(&d.encode()).unwrap();
    assert_eq!(back, d);

    let store = AuthStore::new(d.clone(), Duration::from_secs(60));
    assert!(store.is_enabled());
    store.assign_token("t1".into(), "root".into());
    assert_eq!(store.token_user("t1").as_deref(), Some("root"));
    assert_eq!(store.token_user("nope"), None);
    let mut changed = d.clone();
    changed.user_change_password("root", "other").unwrap();
    store.replace(changed.clone());
    assert_eq!(
        store.token_user("t1"),
        None,
        "a new password ends old tokens"
    );
    store.assign_token("t2".into(), "root".into());
    changed.disable();
    store.replace(changed);
    assert!(!store.is_enabled());
    assert_eq!(store.token_user("t2"), None);

    let short = AuthStore::new(d, Duration::from_millis(1));
    short.assign_token("t".into(), "root".into());
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(short.token_user("t"), None, "tokens expire after the TTL");
}

/// `hashedPassword` as etcd 3.5+ logs it (base64 of the bcrypt text) and as ferrokv's earlier
/// entries carry it (the bcrypt text) are kept as the same bcrypt bytes.
#[test]
fn hashed_passwords_of_both_encodings_are_kept_as_bcrypt() {
    use base64::Engine as _;
    let bcrypt = "$2b$04$abcdefghijklmnopqrstuuWn4mIq0H9J8Fq1u2GkQ0bB8N0l6pC5e";
    let b64 = base64::engine::general_purpose::STANDARD.encode(bcrypt);
    assert_eq!(stored_hash(&b64), bcrypt.as_bytes());
    assert_eq!(stored_hash(bcrypt), bcrypt.as_bytes());
    let mut d = AuthData::default();
    d.user_add(&AuthUserAddRequest {
        name: "u".into(),
        hashed_password: b64,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(d.users["u"].password, bcrypt.as_bytes());
    d.user_change_password("u", bcrypt).unwrap();
    assert_eq!(d.users["u"].password, bcrypt.as_bytes());
}
