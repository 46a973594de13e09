//! The alarms raised in the cluster (NOSPACE, CORRUPT): replicated through raft, kept in
//! memory on every member. Must not depend on anything but the wire types.

use ferrokv_proto::etcdserverpb::{
    self as pb, alarm_request::AlarmAction, AlarmMember, AlarmResponse,
};
use parking_lot::Mutex;

/// The alarms raised in the cluster (replicated through raft, kept in memory).
#[derive(Default)]
pub struct Alarms {
    inner: Mutex<Vec<AlarmMember>>,
}

impl Alarms {
    pub fn list(&self) -> Vec<AlarmMember> {
        self.inner.lock().clone()
    }

    /// Some member raised NOSPACE: writes that grow the store are refused until disarmed.
    pub fn no_space(&self) -> bool {
        self.inner
            .lock()
            .iter()
            .any(|a| a.alarm == pb::AlarmType::Nospace as i32)
    }

    /// Some member is CORRUPT: writes are refused until disarmed (etcd's corrupt applier).
    pub fn corrupt(&self) -> bool {
        self.inner
            .lock()
            .iter()
            .any(|a| a.alarm == pb::AlarmType::Corrupt as i32)
    }

    pub(crate) fn apply(&self, req: &pb::AlarmRequest) -> AlarmResponse {
        let mut list = self.inner.lock();
        let this = AlarmMember {
            member_id: req.member_id,
            alarm: req.alarm,
        };
        let alarms = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Activate) => {
                if req.alarm != pb::AlarmType::None as i32 && !list.contains(&this) {
                    list.push(this);
                }
                vec![this]
            }
            Ok(AlarmAction::Deactivate) => {
                let before = list.len();
                list.retain(|a| a != &this);
                if before != list.len() {
                    vec![this]
                } else {
                    vec![]
                }
            }
            _ => list.clone(),
        };
        AlarmResponse {
            header: None,
            alarms,
        }
    }
}
