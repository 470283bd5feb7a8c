//! `traceo_db_client_operation_duration_seconds{service,db_system_name,db_operation_name,
//! db_collection_name,db_response_status_code}` (OTel database conventions; statements are
//! never labels). Label sets are capped like routes: past the cap, new ones fold into
//! `db_collection_name="__overflow__"`.

use std::{collections::HashSet, sync::Mutex};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

use super::DbOp;
use crate::metrics::OVERFLOW_ROUTE;

/// The OTel conventions' advice for database operation durations.
const BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];
/// Distinct label sets before new ones fold into the overflow collection.
pub const MAX_SERIES: usize = 2_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    service: String,
    db_system_name: String,
    db_operation_name: String,
    db_collection_name: String,
    db_response_status_code: String,
}

type Durations = Family<Labels, Histogram, fn() -> Histogram>;

pub struct DbMetrics {
    duration: Durations,
    seen: Mutex<HashSet<Labels>>,
}

impl DbMetrics {
    pub fn register(r: &mut Registry) -> DbMetrics {
        let m = DbMetrics {
            duration: Family::new_with_constructor(|| Histogram::new(BUCKETS)),
            seen: Mutex::new(HashSet::new()),
        };
        r.register_with_unit(
            "traceo_db_client_operation_duration",
            "Duration of database client operations (PostgreSQL, Redis) from first request byte to last reply byte",
            Unit::Seconds,
            m.duration.clone(),
        );
        m
    }

    pub fn observe(&self, service: &str, op: &DbOp, duration_s: Option<f64>) {
        let Some(d) = duration_s else { return };
        let mut labels = Labels {
            service: service.to_owned(),
            db_system_name: op.system.as_str().to_owned(),
            db_operation_name: op.operation.clone().unwrap_or_default(),
            db_collection_name: op.collection.clone().unwrap_or_default(),
            db_response_status_code: op.status_code.clone().unwrap_or_default(),
        };
        {
            let mut seen = self.seen.lock().expect("metrics lock");
            if !seen.contains(&labels) {
                if seen.len() >= MAX_SERIES {
                    labels.db_operation_name = OVERFLOW_ROUTE.to_owned();
                    labels.db_collection_name = OVERFLOW_ROUTE.to_owned();
                } else {
                    seen.insert(labels.clone());
                }
            }
        }
        self.duration.get_or_create(&labels).observe(d);
    }
}
