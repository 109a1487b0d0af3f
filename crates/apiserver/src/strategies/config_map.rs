//! ConfigMap: the generic strategy, with a DATA column.

use crate::resources::{Cell, Column, ResourceDef, age_column};

/// `v1` ConfigMap.
pub fn def() -> ResourceDef {
    let mut cm = ResourceDef::new("", "v1", "ConfigMap", "configmaps", true).short(&["cm"]);
    cm.columns = vec![
        Column::new("Data", Cell::Count(".data".into())),
        age_column(),
    ];
    cm
}
