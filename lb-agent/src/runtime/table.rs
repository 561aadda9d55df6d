//! The tasks a runtime runs, by ID: one table for both runtimes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use mesh_api::task::TaskId;

/// Task ID -> what the runtime keeps of the task. Shared by the runtime's
/// calls and the tasks' exit watchers.
pub(crate) struct TaskTable<T>(Mutex<HashMap<TaskId, Arc<T>>>);

impl<T> TaskTable<T> {
    pub(crate) fn new() -> Self {
        Self(Mutex::new(HashMap::new()))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TaskId, Arc<T>>> {
        self.0.lock().expect("task table lock poisoned")
    }

    pub(crate) fn get(&self, id: TaskId) -> Option<Arc<T>> {
        self.lock().get(&id).cloned()
    }

    pub(crate) fn ids(&self) -> Vec<TaskId> {
        self.lock().keys().copied().collect()
    }

    pub(crate) fn has(&self, id: TaskId) -> bool {
        self.lock().contains_key(&id)
    }

    pub(crate) fn insert(&self, id: TaskId, task: T) {
        self.lock().insert(id, Arc::new(task));
    }

    pub(crate) fn remove(&self, id: TaskId) {
        self.lock().remove(&id);
    }
}
