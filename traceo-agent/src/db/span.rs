//! An operation's CLIENT span, per the OTel database conventions: named `SELECT audit_logs`
//! (`{db.operation.name} {db.collection.name}`), with db.system.name, db.namespace,
//! db.operation.name, db.collection.name, db.query.text (sanitised),
//! db.response.status_code, db.response.returned_rows, server.address/port; a failed
//! operation has error.type and an error status.

use crate::http::Exchange;
use crate::spans::{Addr, Attrs, SERVER, address};

use super::DbOp;

/// The operation's attributes; `spans::span` builds the span around them (kind CLIENT, the
/// name from `DbOp::span_name`, an error status from `DbOp::error_type`).
pub fn attributes(ex: &Exchange, op: &DbOp, out: &mut impl Attrs) {
    out.str("db.system.name", op.system.as_str());
    let opt = [
        ("db.namespace", &op.namespace),
        ("db.operation.name", &op.operation),
        ("db.collection.name", &op.collection),
        ("db.query.text", &op.query_text),
        ("db.response.status_code", &op.status_code),
    ];
    for (k, v) in opt {
        if let Some(v) = v {
            out.str(k, v);
        }
    }
    if let Some(rows) = op.rows {
        out.int("db.response.returned_rows", i64::try_from(rows).unwrap_or(i64::MAX));
    }
    address(out, SERVER, ex.peer.map(Addr::new).as_ref());
    if let Some(e) = op.error_type() {
        out.str("error.type", &e);
    }
    if let Some(link) = ex.link() {
        out.str("traceo.link", link.as_str());
    }
}
