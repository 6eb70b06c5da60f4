//! The command line: `berth serve` and the operator subcommands.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Berth, a self-hosted OCI container registry.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the registry server.
    Serve(ServeArgs),
    /// Manage local users (works whatever identity provider is configured).
    User {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        action: UserCommand,
    },
    /// Manage robot (CI) tokens.
    Token {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        action: TokenCommand,
    },
    /// Manage role grants on repository patterns.
    Grant {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        action: GrantCommand,
    },
    /// Manage, preview and run retention policies.
    Retention {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        action: RetentionCommand,
    },
    /// Collect garbage now: untagged unreferenced manifests, unused blobs and
    /// orphaned files past the grace period, while the registry keeps serving.
    Gc {
        #[command(flatten)]
        store: StoreArgs,
        /// Report what would be removed without removing anything.
        #[arg(long)]
        dry_run: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Lower this run's CPU priority by this much (as `nice` does), so
        /// that a registry serving on the same machine keeps its latency;
        /// 0 runs at the caller's priority.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u8).range(0..=19))]
        nice: u8,
    },
    /// Work on the pull-through cache.
    Cache {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        action: CacheCommand,
    },
    /// Check that the metadata database and the blob store agree.
    Fsck {
        #[command(flatten)]
        store: StoreArgs,
        /// Also re-hash every blob (reads all of them).
        #[arg(long)]
        verify: bool,
        /// Fix what can be fixed without losing data.
        #[arg(long)]
        repair: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the audit log (access changes and lifecycle deletions), newest first.
    Audit {
        #[command(flatten)]
        store: StoreArgs,
        /// How many entries to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Write the content of repositories to an archive for another registry
    /// (across an air gap): an OCI image layout in a tar.
    ///
    /// Every tag of the chosen repositories goes, with the children of each
    /// index and every referrer (signatures, SBOMs, attestations) of what
    /// goes; untagged manifests that nothing exported references stay behind.
    /// Each blob is written once, however many repositories share it. The
    /// registry keeps serving meanwhile. `berth import` reads the archive.
    Export(ExportArgs),
    /// Store the content of an archive of `berth export` in this registry.
    ///
    /// Reads the archive in one pass; every blob's digest is verified as it
    /// streams in, and a blob that does not match is never stored. Manifests
    /// and tags are stored only once every blob they need has arrived, as
    /// provenance `snapshot`; tags are moved to the archive's manifests.
    /// Importing the same archive again changes nothing. Exits non-zero, and
    /// stores no manifest or tag, when the archive is damaged or incomplete.
    Import(ImportArgs),
    /// Move an embedded installation (SQLite and blob files in a data
    /// directory) into the scale-out stores (PostgreSQL, S3) of a configuration.
    ///
    /// Stop `berth serve` and every other berth command on the data directory
    /// first: migrate locks its database for the whole run and refuses to
    /// start while another process has it open. Blobs are copied first, each
    /// verified against its digest while it streams; then every table in
    /// key order. Run it again after an interruption: blobs already in the
    /// target are skipped and rows that already match are not written again.
    /// The target database must be empty or hold an earlier run's copy of
    /// this source: migrate never merges two registries.
    /// Upload sessions in flight are not moved (clients restart them).
    /// Exits non-zero when anything could not be copied.
    Migrate(MigrateArgs),
    /// Copy an embedded installation (SQLite and blob files) into DEST_DIR
    /// while the registry keeps serving.
    ///
    /// The database is copied first, in one read transaction, so the copy is
    /// the registry as of one moment; then every blob file the copy records,
    /// each re-hashed against its digest. Upload sessions in flight are left
    /// out (clients restart them). DEST_DIR must be new or empty; when done
    /// it holds a data directory, with backup.json describing it:
    /// `berth serve --data-dir DEST_DIR` serves the copy. Exits non-zero when
    /// a blob could not be copied. For PostgreSQL and S3, back up those
    /// stores instead (docs/operations.md, "Backup and restore").
    Backup(BackupArgs),
    /// Describe and check configuration files.
    Config {
        #[command(subcommand)]
        action: ConfigCommand,
    },
    /// Probe a running server: GET URL over plain HTTP, exit 0 on a 200 and
    /// 1 otherwise. For container health checks in images without curl.
    Healthcheck {
        /// What to probe [default: /healthz on loopback at the port of
        /// BERTH_TLS__PLAIN_LISTEN (the plain listener beside TLS), else of
        /// BERTH_LISTEN, else http://127.0.0.1:5000/healthz]
        url: Option<String>,
        /// Give up after this many seconds (connecting, and again reading).
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["repos", "all"])))]
pub struct ExportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Export the repositories matching PATTERN (* within a path component,
    /// ** across, as in grants); repeat for more.
    #[arg(long = "repo", value_name = "PATTERN")]
    pub repos: Vec<String>,
    /// Export every repository.
    #[arg(long)]
    pub all: bool,
    /// The archive to write (written as OUT.partial, then renamed); - for
    /// standard output.
    #[arg(value_name = "OUT.tar")]
    pub output: PathBuf,
    /// Print the summary as JSON on standard output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The archive to read; - for standard input.
    #[arg(value_name = "IN.tar")]
    pub input: PathBuf,
    /// Print the summary as JSON on standard output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Data directory of the embedded installation (holding berth.db and blobs/).
    #[arg(long, value_name = "DATA_DIR")]
    pub from: PathBuf,
    /// Configuration file of the scale-out installation (meta.backend =
    /// "postgres" with meta.url, and its [storage]); BERTH_* variables apply
    /// as they do to `berth serve`.
    #[arg(long, value_name = "CONFIG_FILE")]
    pub to: PathBuf,
    /// Also re-read and re-hash the blobs the target already holds, replacing
    /// any that do not match. Without it, a blob of the recorded size in the
    /// target counts as copied.
    #[arg(long)]
    pub verify_existing: bool,
    /// Blobs copied at the same time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The directory to write the copy into (created when missing; must be empty).
    #[arg(value_name = "DEST_DIR")]
    pub dest: PathBuf,
    /// Blob files copied at the same time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Address to listen on, such as 127.0.0.1:5000 (default 0.0.0.0:5000).
    #[arg(long)]
    pub listen: Option<String>,
    /// Directory for all state (default ./berth-data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Where the operator subcommands find the metadata: the same configuration
/// the server runs with.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// TOML configuration file.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// Directory for all state (default ./berth-data).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user; the password is read from standard input.
    Add {
        name: String,
        /// Administrator of the whole registry (all repositories, the admin API).
        #[arg(long)]
        admin: bool,
    },
    /// Change a user's password (read from standard input).
    Passwd { name: String },
    /// Stop a user from logging in (tokens already issued expire on their own).
    Disable { name: String },
    /// Let a disabled user log in again.
    Enable { name: String },
    /// List users.
    List,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a robot token; it is printed once and only its hash is kept.
    Create {
        #[arg(long)]
        name: String,
        /// PATTERN:ROLE, such as 'team/*:push'; repeat for more.
        #[arg(long = "grant", required = true)]
        grants: Vec<String>,
        /// Lifetime such as 30d, 12h or 2w (default: no expiry).
        #[arg(long)]
        expires: Option<String>,
    },
    /// List robot tokens (never the tokens themselves).
    List,
    /// Revoke a robot token at once.
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub enum GrantCommand {
    /// Give SUBJECT (user:NAME, group:NAME or robot:NAME) ROLE (pull, push,
    /// delete or admin) on repositories matching PATTERN (* within a path
    /// component, ** across).
    Add {
        subject: String,
        pattern: String,
        role: String,
    },
    /// List grants.
    List,
    /// Remove a grant by its id.
    Remove { id: i64 },
}

/// The rules of a retention policy, as command-line flags.
#[derive(Debug, Default, clap::Args)]
pub struct RulesArgs {
    /// Keep the N most recently pushed tags.
    #[arg(long)]
    pub keep_last: Option<u32>,
    /// Keep tags pushed in the last N days.
    #[arg(long)]
    pub keep_days: Option<u32>,
    /// Keep tags pulled in the last N days.
    #[arg(long)]
    pub keep_pulled_within: Option<u32>,
    /// Never delete tags matching this glob (repeat for more), such as 'v*'.
    #[arg(long = "keep-pattern")]
    pub keep_patterns: Vec<String>,
    /// Never leave fewer than N tags.
    #[arg(long)]
    pub keep_min: Option<u32>,
    /// Delete untagged manifests after N days.
    #[arg(long)]
    pub untagged: Option<u32>,
    /// keep_by_age: tags expire N days after their last access (push,
    /// caching or pull); for pull-through caches.
    #[arg(long)]
    pub max_age_days: Option<u32>,
    /// keep_by_age: keep tags pulled in the last N days (needs --max-age-days).
    #[arg(long, requires = "max_age_days")]
    pub match_pulled_in_last_days: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Pull the images listed in FILE (one `NAME[:TAG|@DIGEST] [PLATFORM]`
    /// per line, `-` for standard input) into the cache from their upstreams;
    /// what is cached already is skipped.
    Preload {
        file: PathBuf,
        /// Images pulled at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Create or replace the policy of repositories matching PATTERN ('**' is
    /// the global default; the most specific matching pattern applies).
    Set {
        pattern: String,
        #[command(flatten)]
        rules: RulesArgs,
    },
    /// List the policies.
    Show,
    /// Delete the policy of PATTERN.
    Delete { pattern: String },
    /// List every tag that a run now would delete and keep, with the rule and reason.
    Preview {
        /// Only repositories matching this pattern.
        #[arg(long)]
        repo: Option<String>,
        /// Only what would be deleted.
        #[arg(long)]
        deleted_only: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Delete what a preview now shows, recording each deletion in the audit log.
    Run {
        /// Only repositories matching this pattern.
        #[arg(long)]
        repo: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the reference of every configuration key as Markdown (the
    /// content of docs/configuration.md).
    Reference,
    /// Print a TOML file with every option commented out, each with its
    /// description and default (the content of deploy/berth.example.toml).
    Example,
    /// Load FILE, and the BERTH_* environment, as `berth serve` would and
    /// check what can be checked without opening any store or network
    /// connection. Prints "FILE: OK", or each problem with its key, and exits
    /// non-zero on a problem.
    Check {
        /// The TOML configuration file.
        file: PathBuf,
    },
}
