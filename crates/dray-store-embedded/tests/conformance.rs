//! The shared store conformance suite, run against the embedded store: once on the real file
//! system, once on the simulated disk (whose restarts go through a simulated power cut of nothing:
//! a clean close, then recovery).

use std::sync::Arc;

use dray_store::conformance::Harness;
use dray_store_embedded::fs::SimFs;
use dray_store_embedded::{EmbeddedConfig, EmbeddedStore};

struct OnDisk {
    dir: tempfile::TempDir,
}

impl OnDisk {
    fn new() -> OnDisk {
        OnDisk { dir: tempfile::tempdir().expect("temp dir") }
    }

    fn config(&self) -> EmbeddedConfig {
        let mut config = EmbeddedConfig::new(self.dir.path());
        config.seed = Some(7);
        config
    }
}

impl Harness for OnDisk {
    type Store = EmbeddedStore;

    async fn open(&mut self) -> EmbeddedStore {
        EmbeddedStore::open(self.config()).expect("open the store")
    }

    async fn restart(&mut self, store: EmbeddedStore) -> EmbeddedStore {
        store.close().expect("close the store");
        self.open().await
    }
}

mod on_disk {
    use super::*;
    dray_store::conformance_suite!(OnDisk::new());

    mod tokens {
        use super::*;
        dray_store::token_conformance_suite!(OnDisk::new());
    }

    mod locks {
        use super::*;
        dray_store::lock_conformance_suite!(OnDisk::new());
    }
}

struct Simulated {
    fs: SimFs,
}

impl Harness for Simulated {
    type Store = EmbeddedStore;

    async fn open(&mut self) -> EmbeddedStore {
        let mut config = EmbeddedConfig::new("/data");
        config.seed = Some(11);
        // Small segments so the suite also crosses segment boundaries.
        config.segment_bytes_max = 16 * 1024;
        EmbeddedStore::open_with_fs(Arc::new(self.fs.clone()), config).expect("open the store")
    }

    async fn restart(&mut self, store: EmbeddedStore) -> EmbeddedStore {
        store.close().expect("close the store");
        self.open().await
    }
}

mod simulated {
    use super::*;
    dray_store::conformance_suite!(Simulated { fs: SimFs::new() });

    mod tokens {
        use super::*;
        dray_store::token_conformance_suite!(Simulated { fs: SimFs::new() });
    }

    mod locks {
        use super::*;
        dray_store::lock_conformance_suite!(Simulated { fs: SimFs::new() });
    }
}
