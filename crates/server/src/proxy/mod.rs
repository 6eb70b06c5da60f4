pub mod ssrf;
