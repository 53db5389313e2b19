//! Interned usage types. Cost-map types keep their cost-map index as id, so pricing a call is one
//! hash lookup; types the cost map does not price (overrides, `unmapped="free"`, manual
//! adjustments) get ids after those, allocated once per name.

use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::record::TypeId;
use crate::costmap::CostMap;

pub struct TypeRegistry {
    cost_map: Arc<CostMap>,
    /// Lock-free reads on the hot path; inserts are rare and serialized by `names`.
    unpriced: papaya::HashMap<Box<str>, TypeId, foldhash::fast::RandomState>,
    names: RwLock<Vec<Arc<str>>>,
    insert_lock: Mutex<()>,
}

impl TypeRegistry {
    pub fn new(cost_map: Arc<CostMap>) -> TypeRegistry {
        let names = cost_map
            .entries()
            .iter()
            .map(|e| Arc::from(&*e.usage_type))
            .collect();
        TypeRegistry {
            cost_map,
            unpriced: crate::ledger::record::new_concurrent_map(),
            names: RwLock::new(names),
            insert_lock: Mutex::new(()),
        }
    }

    pub fn cost_map(&self) -> &CostMap {
        &self.cost_map
    }

    /// The id of a type the cost map prices.
    pub fn priced(&self, name: &str) -> Option<TypeId> {
        self.cost_map.index_of(name)
    }

    /// The id of a type already known (priced, or interned before), allocating nothing.
    pub fn existing(&self, name: &str) -> Option<TypeId> {
        self.priced(name)
            .or_else(|| self.unpriced.pin().get(name).copied())
    }

    /// The id of any type, allocating one for a name the cost map does not price.
    pub fn intern(&self, name: &str) -> TypeId {
        if let Some(id) = self.priced(name) {
            return id;
        }
        if let Some(&id) = self.unpriced.pin().get(name) {
            return id;
        }
        let _guard = self.insert_lock.lock();
        if let Some(&id) = self.unpriced.pin().get(name) {
            return id;
        }
        let mut names = self.names.write();
        let id = TypeId::try_from(names.len()).expect("fewer than 2^32 usage types");
        names.push(Arc::from(name));
        self.unpriced.pin().insert(Box::from(name), id);
        id
    }

    pub fn name(&self, id: TypeId) -> Arc<str> {
        Arc::clone(&self.names.read()[id as usize])
    }
}
