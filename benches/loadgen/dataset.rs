//! The shuffle files a run serves: a profile's block sizes, written (or found already written)
//! under a root, the calls that fetch them, and their eviction from the page cache.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use spark_shuffle_agent::protocol::ExecutorShuffleInfo;
use spark_shuffle_agent::store::ExecutorDirs;

/// The executor whose files are the dataset (shuffle 0, one map output per map id).
pub const EXEC: &str = "0";
/// The executor of the hot probe's one small block, in dirs of its own so that evicting the
/// dataset never touches it.
pub const HOT_EXEC: &str = "hot";
/// Size of the hot probe's block.
pub const HOT_BLOCK_BYTES: u64 = 4096;
/// A reducer-shaped call names one reduce partition from this many map outputs, as Spark's
/// reducer fetches from a batch of map outputs in one FetchShuffleBlocks.
const MAPS_PER_REDUCER_CALL: usize = 64;
const SUB_DIRS: i32 = 64;

/// Which blocks one fetch call names.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shape {
    /// Every reduce of one map output.
    Map,
    /// One reduce of each of up to [`MAPS_PER_REDUCER_CALL`] map outputs.
    Reducer,
}

/// What the connections fetch: `maps` map outputs of `reduces` blocks each, in calls of `shape`.
#[derive(Clone, Debug)]
pub struct Workload {
    pub maps: usize,
    pub reduces: usize,
    pub shape: Shape,
}

impl Workload {
    /// How many distinct calls cover every block exactly once.
    pub fn calls(&self) -> usize {
        match self.shape {
            Shape::Map => self.maps,
            Shape::Reducer => self.groups() * self.reduces,
        }
    }

    pub fn blocks(&self) -> usize {
        self.maps * self.reduces
    }

    fn groups(&self) -> usize {
        self.maps.div_ceil(MAPS_PER_REDUCER_CALL)
    }

    /// The map ids and per-map reduce ids of call `i` (taken modulo [`Workload::calls`]). Reducer
    /// calls go reduce by reduce, each over every group of map outputs, as reduce tasks run in
    /// partition order; with one group (64 maps or fewer) call `i` is simply reduce `i`.
    pub fn call(&self, i: usize) -> (Vec<i64>, Vec<Vec<i32>>) {
        let i = i % self.calls().max(1);
        match self.shape {
            Shape::Map => (vec![i as i64], vec![(0..self.reduces as i32).collect()]),
            Shape::Reducer => {
                let (reduce, group) = (i / self.groups(), i % self.groups());
                let first = group * MAPS_PER_REDUCER_CALL;
                let maps: Vec<i64> = (first..self.maps.min(first + MAPS_PER_REDUCER_CALL)).map(|m| m as i64).collect();
                let reduce_ids = vec![vec![reduce as i32]; maps.len()];
                (maps, reduce_ids)
            }
        }
    }
}

/// A small deterministic generator (xorshift64), so every run and every server gets the same sizes.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Lognormal, median 32 KiB, sigma 1 (Box-Muller), clipped to [64 B, 8 MiB].
    fn mixed_block(&mut self) -> u64 {
        let z = (-2.0 * self.uniform().max(1e-12).ln()).sqrt() * (2.0 * std::f64::consts::PI * self.uniform()).cos();
        ((32768f64).ln() + z).exp().clamp(64.0, (8 << 20) as f64) as u64
    }
}

/// Block sizes of each map output, `sizes[map][reduce]`: the profile's default map count, or with
/// `dataset_bytes` as many map outputs as it takes to reach that many bytes (the same sizes as
/// the default for the first maps, since they come from the same generator).
pub fn sizes(profile: &str, dataset_bytes: Option<u64>) -> Vec<Vec<u64>> {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let (default_maps, mut map): (usize, Box<dyn FnMut() -> Vec<u64>>) = match profile {
        "4k" => (32, Box::new(|| vec![4096; 64])),
        "4k-reducer" => (64, Box::new(|| vec![4096; 64])),
        "1m" => (16, Box::new(|| vec![1 << 20; 16])),
        "mixed" => (32, Box::new(move || (0..32).map(|_| rng.mixed_block()).collect())),
        "mixed-reducer" => (64, Box::new(move || (0..32).map(|_| rng.mixed_block()).collect())),
        other => panic!("unknown profile {other}"),
    };
    let mut out = Vec::new();
    let mut total = 0u64;
    loop {
        let done = match dataset_bytes {
            Some(want) => total >= want,
            None => out.len() >= default_maps,
        };
        if done {
            return out;
        }
        let m = map();
        total += m.iter().sum::<u64>();
        out.push(m);
    }
}

/// The call shape of a profile.
pub fn shape(profile: &str) -> Shape {
    if profile.ends_with("-reducer") {
        Shape::Reducer
    } else {
        Shape::Map
    }
}

/// One executor's local dirs, as it registers them.
pub struct Executor {
    pub dirs: ExecutorDirs,
}

impl Executor {
    fn create(base: &Path) -> Executor {
        let local_dirs: Vec<String> = (0..2).map(|i| base.join(format!("ld{i}")).display().to_string()).collect();
        for d in &local_dirs {
            std::fs::create_dir_all(d).expect("mkdir local dir");
        }
        let canonical = local_dirs.iter().map(PathBuf::from).collect();
        Executor { dirs: ExecutorDirs::new(local_dirs, SUB_DIRS, canonical).expect("dirs") }
    }

    pub fn info(&self) -> ExecutorShuffleInfo {
        ExecutorShuffleInfo {
            local_dirs: self.dirs.local_dirs().to_vec(),
            sub_dirs_per_local_dir: self.dirs.sub_dirs(),
            shuffle_manager: "org.apache.spark.shuffle.sort.SortShuffleManager".into(),
        }
    }
}

/// A profile's files under `<root>/loadgen-<profile>-<bytes>`, and the hot probe's block.
pub struct Dataset {
    pub dir: PathBuf,
    pub data: Executor,
    pub hot: Executor,
    pub work: Workload,
    pub bytes: u64,
    /// Whether the files were already there from an earlier run (same profile and size).
    pub reused: bool,
}

impl Dataset {
    /// Writes the profile's files under `root`, or reuses them if an earlier run wrote the same
    /// ones: its MANIFEST, written last, names the profile, the map count and the bytes.
    pub fn prepare(root: &Path, profile: &str, dataset_bytes: Option<u64>) -> Dataset {
        let sizes = sizes(profile, dataset_bytes);
        let bytes: u64 = sizes.iter().flatten().sum();
        let dir = root.join(format!("loadgen-{profile}-{bytes}"));
        let manifest = format!("profile={profile} maps={} reduces={} bytes={bytes}\n", sizes.len(), sizes[0].len());
        let reused = std::fs::read_to_string(dir.join("MANIFEST")).is_ok_and(|m| m == manifest);
        if !reused && dir.exists() {
            // A run stopped half way: start over in this dataset's own directory, nothing else.
            std::fs::remove_dir_all(&dir).expect("remove a partly written dataset");
        }
        let data = Executor::create(&dir.join("blockmgr"));
        let hot = Executor::create(&dir.join("hot"));
        if !reused {
            for (map, parts) in sizes.iter().enumerate() {
                write_map_output(&data.dirs, map, parts);
            }
            write_map_output(&hot.dirs, 0, &[HOT_BLOCK_BYTES]);
            std::fs::write(dir.join("MANIFEST"), &manifest).expect("write MANIFEST");
        }
        let work = Workload { maps: sizes.len(), reduces: sizes[0].len(), shape: shape(profile) };
        Dataset { dir, data, hot, work, bytes, reused }
    }

    /// Evicts every file of the dataset (not the hot block) from the page cache: fsync, then
    /// posix_fadvise(DONTNEED). Returns how many files and bytes.
    ///
    /// Why DONTNEED and not `echo 3 > /proc/sys/vm/drop_caches`: DONTNEED drops a file's clean,
    /// unmapped pages (mm/fadvise.c, invalidate_mapping_pages), which after the fsync is all of
    /// them, since neither server maps shuffle files (the agent uses pread and sendfile, the JVM
    /// FileChannel.transferTo). drop_caches would also evict the hot probe's block, both
    /// servers' binaries and jars, and every other user's cache on a shared machine, so it would
    /// measure a colder machine, not a cold dataset. Checked with `fincore` on the dataset's
    /// files: 0 resident pages after this (see the commit message).
    pub fn drop_caches(&self) -> (usize, u64) {
        let (mut files, mut bytes) = (0, 0);
        for path in files_under(&self.dir.join("blockmgr")) {
            let file = File::open(&path).expect("open a dataset file");
            file.sync_all().expect("fsync");
            rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).expect("posix_fadvise");
            files += 1;
            bytes += file.metadata().expect("stat").len();
        }
        (files, bytes)
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let entry = entry.expect("dir entry");
            if entry.file_type().expect("file type").is_dir() {
                todo.push(entry.path());
            } else {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

/// One map output: the data file, its index (big-endian offsets) and a checksum file of zeros
/// (a DiagnoseCorruption still reads and checksums the block, then says disk issue).
fn write_map_output(dirs: &ExecutorDirs, map: usize, parts: &[u64]) {
    let path_of = |name: String| {
        let path = dirs.file_path(&name);
        std::fs::create_dir_all(path.parent().expect("subdir")).expect("mkdir");
        path
    };
    let mut offsets = vec![0u64];
    for s in parts {
        offsets.push(offsets.last().copied().unwrap_or(0) + s);
    }
    // Byte i of map m is (7i + m) mod 256; the pattern repeats every 256 bytes, so one 1 MiB
    // buffer written over and over gives the whole file (datasets run to gigabytes).
    let pattern: Vec<u8> = (0..1u64 << 20).map(|i| (i * 7 + map as u64) as u8).collect();
    let mut data =
        BufWriter::with_capacity(1 << 20, File::create(path_of(format!("shuffle_0_{map}_0.data"))).expect("create"));
    let mut left = *offsets.last().unwrap_or(&0);
    while left > 0 {
        let n = left.min(pattern.len() as u64) as usize;
        data.write_all(&pattern[..n]).expect("write data");
        left -= n as u64;
    }
    data.flush().expect("flush data");
    let index: Vec<u8> = offsets.iter().flat_map(|o| o.to_be_bytes()).collect();
    std::fs::write(path_of(format!("shuffle_0_{map}_0.index")), index).expect("write index");
    std::fs::write(path_of(format!("shuffle_0_{map}_0.checksum.ADLER32")), vec![0u8; 8 * parts.len()])
        .expect("checksum");
}
