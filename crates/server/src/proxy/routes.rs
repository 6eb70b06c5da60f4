//! Which repository a `/v2/` name means: a local one, a remote one (a
//! configured upstream, reached by its prefix, by its host in the path, or by
//! containerd's `?ns=`), or a virtual one (an ordered list of the others).
//!
//! Pure: names in, a [`Route`] out. Every way of addressing one upstream
//! image ends at the same canonical repository name, `<prefix>/<path>`, so
//! all of them share one cache. Nothing here talks to an upstream.

use berth_oci::RepoName;

/// How one upstream is addressed: what the routes need to know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressing {
    /// The repository prefix its images are cached under (`hub`, `acme/dockerhub-mirror`).
    pub prefix: String,
    /// The registry host clients name in-path and with `?ns=` (`docker.io`).
    pub host: String,
    /// Docker Hub's rule: a one-component name is under `library/`.
    pub library_prefix: bool,
}

/// A virtual repository as the routes see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualAddressing {
    pub name: String,
    pub members: Vec<String>,
    pub push_to: Option<String>,
}

/// Where a name resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A repository of this registry.
    Local(RepoName),
    /// A repository cached from upstream number `upstream` (an index into
    /// the configured list), where it is called `path`.
    Remote(Remote),
    /// A repository cached from a host that only `allow_any_upstream` lets in.
    AnyHost(Remote),
    /// A virtual repository: its members' names for this request, in order,
    /// and where pushes go.
    Virtual {
        members: Vec<Route>,
        push_to: Option<RepoName>,
    },
}

/// A remote repository: its canonical name here and its name upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The cache's repository name, the same however the image was addressed.
    pub repo: RepoName,
    /// For [`Route::Remote`] the upstream's index; for [`Route::AnyHost`] unused (0).
    pub upstream: usize,
    /// The host, for [`Route::AnyHost`]; the configured host otherwise.
    pub host: String,
    /// The repository's name at the upstream (`library/alpine`).
    pub path: String,
}

impl Route {
    /// The repository the request reads and writes in this registry, for
    /// routes that have one.
    pub fn repo(&self) -> Option<&RepoName> {
        match self {
            Route::Local(repo) => Some(repo),
            Route::Remote(r) | Route::AnyHost(r) => Some(&r.repo),
            Route::Virtual { .. } => None,
        }
    }
}

/// The addressing rules of every configured upstream and virtual repository.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    upstreams: Vec<Addressing>,
    virtuals: Vec<VirtualAddressing>,
    allow_any_upstream: bool,
}

impl Routes {
    pub fn new(upstreams: Vec<Addressing>, virtuals: Vec<VirtualAddressing>, allow_any_upstream: bool) -> Routes {
        Routes {
            upstreams,
            virtuals,
            allow_any_upstream,
        }
    }

    /// Whether no request can be anything but local.
    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty() && self.virtuals.is_empty() && !self.allow_any_upstream
    }

    /// Where `name` (as addressed in the path) goes, with containerd's
    /// `?ns=` value when the request has one.
    pub fn resolve(&self, name: &RepoName, ns: Option<&str>) -> Route {
        if let Some(route) = ns.and_then(|ns| self.by_host(ns, name.as_str())) {
            return route;
        }
        if let Some(route) = self.virtual_route(name.as_str()) {
            return route;
        }
        self.direct(name)
    }

    /// The route of a name that is not virtual.
    fn direct(&self, name: &RepoName) -> Route {
        let text = name.as_str();
        // The longest configured prefix that the name continues wins, so
        // `acme/dockerhub-mirror` beats `acme` for `acme/dockerhub-mirror/x`.
        let by_prefix = self
            .upstreams
            .iter()
            .enumerate()
            .filter_map(|(i, u)| strip_components(text, &u.prefix).map(|rest| (i, rest)))
            .max_by_key(|(i, _)| self.upstreams[*i].prefix.len());
        if let Some((i, rest)) = by_prefix {
            if let Some(route) = self.remote(i, rest) {
                return route;
            }
        }
        if let Some((first, rest)) = text.split_once('/') {
            if let Some(route) = self.by_host(first, rest) {
                return route;
            }
        }
        Route::Local(name.clone())
    }

    /// The route of `path` at the registry `host`: a configured upstream
    /// with that host, or any host when that is allowed.
    fn by_host(&self, host: &str, path: &str) -> Option<Route> {
        let host = host.to_ascii_lowercase();
        if let Some(i) = self.upstreams.iter().position(|u| u.host == host) {
            return self.remote(i, path);
        }
        if !self.allow_any_upstream || !looks_like_host(&host) {
            return None;
        }
        let path = library_rule(&host == "docker.io", path);
        let repo = format!("{}/{path}", host_component(&host)?).parse().ok()?;
        Some(Route::AnyHost(Remote {
            repo,
            upstream: 0,
            host,
            path,
        }))
    }

    fn remote(&self, upstream: usize, path: &str) -> Option<Route> {
        let u = &self.upstreams[upstream];
        let path = library_rule(u.library_prefix, path);
        let repo = format!("{}/{path}", u.prefix).parse().ok()?;
        Some(Route::Remote(Remote {
            repo,
            upstream,
            host: u.host.clone(),
            path,
        }))
    }

    fn virtual_route(&self, name: &str) -> Option<Route> {
        let v = self
            .virtuals
            .iter()
            .filter(|v| strip_components(name, &v.name).is_some())
            .max_by_key(|v| v.name.len())?;
        let rest = strip_components(name, &v.name)?;
        let member_route = |member: &str| -> Option<Route> {
            let name: RepoName = format!("{member}/{rest}").parse().ok()?;
            Some(self.direct(&name))
        };
        let members = v.members.iter().filter_map(|m| member_route(m)).collect();
        let push_to = v.push_to.as_ref().and_then(|p| format!("{p}/{rest}").parse().ok());
        Some(Route::Virtual { members, push_to })
    }
}

/// What follows `prefix` in `name`, when `name` is `prefix` plus at least
/// one more path component.
fn strip_components<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    name.strip_prefix(prefix)?
        .strip_prefix('/')
        .filter(|rest| !rest.is_empty())
}

/// Docker Hub's official images live under `library/`: `alpine` is `library/alpine`.
fn library_rule(applies: bool, path: &str) -> String {
    if applies && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_string()
    }
}

/// Whether a path component names a registry host (as the Docker CLI
/// decides: it has a dot or a port, or is `localhost`).
fn looks_like_host(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

/// The host as the first component of a repository name: a port's colon
/// cannot appear there, so a host with a port has no in-path form.
fn host_component(host: &str) -> Option<&str> {
    (!host.contains(':')).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    fn routes(allow_any: bool) -> Routes {
        Routes::new(
            vec![
                Addressing {
                    prefix: "hub".into(),
                    host: "docker.io".into(),
                    library_prefix: true,
                },
                Addressing {
                    prefix: "acme/dockerhub-mirror".into(),
                    host: "mirror.acme.test".into(),
                    library_prefix: false,
                },
                Addressing {
                    prefix: "k8s".into(),
                    host: "registry.k8s.io".into(),
                    library_prefix: false,
                },
            ],
            vec![VirtualAddressing {
                name: "all".into(),
                members: vec!["team".into(), "hub".into()],
                push_to: Some("team".into()),
            }],
            allow_any,
        )
    }

    fn remote(route: Route) -> (String, usize, String) {
        match route {
            Route::Remote(r) => (r.repo.as_str().to_string(), r.upstream, r.path),
            other => panic!("not remote: {other:?}"),
        }
    }

    #[test]
    fn every_form_of_one_image_ends_in_one_cache() {
        let r = routes(false);
        let expected = ("hub/library/alpine".to_string(), 0, "library/alpine".to_string());
        assert_eq!(remote(r.resolve(&name("hub/library/alpine"), None)), expected);
        assert_eq!(remote(r.resolve(&name("hub/alpine"), None)), expected);
        assert_eq!(remote(r.resolve(&name("docker.io/library/alpine"), None)), expected);
        assert_eq!(remote(r.resolve(&name("docker.io/alpine"), None)), expected);
        assert_eq!(remote(r.resolve(&name("alpine"), Some("docker.io"))), expected);
        assert_eq!(remote(r.resolve(&name("library/alpine"), Some("Docker.IO"))), expected);
    }

    #[test]
    fn nested_prefixes_and_hosts_resolve() {
        let r = routes(false);
        assert_eq!(
            remote(r.resolve(&name("acme/dockerhub-mirror/library/alpine"), None)),
            (
                "acme/dockerhub-mirror/library/alpine".into(),
                1,
                "library/alpine".into()
            )
        );
        assert_eq!(
            remote(r.resolve(&name("registry.k8s.io/kube-scheduler"), None)),
            ("k8s/kube-scheduler".into(), 2, "kube-scheduler".into())
        );
        assert_eq!(
            remote(r.resolve(&name("kube-scheduler"), Some("registry.k8s.io"))),
            ("k8s/kube-scheduler".into(), 2, "kube-scheduler".into())
        );
        // OrbitalReg's <project>/<repo>/<image> shape is a nested prefix too.
        assert_eq!(
            remote(r.resolve(&name("k8s/sig/kube-scheduler"), None)),
            ("k8s/sig/kube-scheduler".into(), 2, "sig/kube-scheduler".into())
        );
    }

    #[test]
    fn other_names_are_local() {
        let r = routes(false);
        for local in ["hub", "team/app", "acme/other", "quay.io/x/y", "hubx/alpine"] {
            assert_eq!(r.resolve(&name(local), None), Route::Local(name(local)), "{local}");
        }
        // An unknown ?ns= (containerd naming this registry itself) changes nothing.
        assert_eq!(
            r.resolve(&name("team/app"), Some("berth.local:5000")),
            Route::Local(name("team/app"))
        );
    }

    #[test]
    fn any_host_only_when_allowed() {
        let r = routes(true);
        match r.resolve(&name("quay.io/coreos/etcd"), None) {
            Route::AnyHost(remote) => {
                assert_eq!(remote.repo, name("quay.io/coreos/etcd"));
                assert_eq!((remote.host.as_str(), remote.path.as_str()), ("quay.io", "coreos/etcd"));
            }
            other => panic!("{other:?}"),
        }
        match r.resolve(&name("etcd"), Some("quay.io")) {
            Route::AnyHost(remote) => assert_eq!(remote.repo, name("quay.io/etcd")),
            other => panic!("{other:?}"),
        }
        // A host with a port has no in-path name; by ?ns= it has none either.
        assert_eq!(
            r.resolve(&name("etcd"), Some("quay.io:443")),
            Route::Local(name("etcd"))
        );
        assert_eq!(r.resolve(&name("team/app"), None), Route::Local(name("team/app")));
    }

    #[test]
    fn a_virtual_name_lists_its_members_in_order() {
        let r = routes(false);
        match r.resolve(&name("all/alpine"), None) {
            Route::Virtual { members, push_to } => {
                assert_eq!(members[0], Route::Local(name("team/alpine")));
                assert_eq!(remote(members[1].clone()).0, "hub/library/alpine");
                assert_eq!(push_to, Some(name("team/alpine")));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.resolve(&name("all"), None), Route::Local(name("all")));
    }
}
