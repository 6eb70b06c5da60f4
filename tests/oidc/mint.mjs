#!/usr/bin/env node
// Mints an ID token from a running provider.mjs the way a relying party does:
// discovery, the authorization-code flow with PKCE (following redirects by
// hand and keeping the provider's cookies), the code exchange at the token
// endpoint, and a check of the ID token it got (RS256 signature against the
// JWKS, iss, aud, sub, nonce). Prints only the ID token on stdout.
//
//   node mint.mjs ISSUER SUB [--client-id ID] [--nonce X]
//
// SUB becomes the authorization request's login_hint, which provider.mjs logs
// in as, so it is the token's `sub`. Exit 0 on success; otherwise the reason
// goes to stderr and the exit code is 1 (2 for bad usage).
//
// Uses only Node.js built-ins available in Node 18 (global fetch, node:crypto).

import {
  createHash, createPublicKey, randomBytes, verify,
} from 'node:crypto';
import { parseArgs as nodeParseArgs } from 'node:util';

const REDIRECT_URI = 'http://127.0.0.1/callback';
const MAX_HOPS = 20;
const TIMEOUT_MS = 15000;

class MintError extends Error {}

function usage(msg) {
  if (msg) process.stderr.write(`mint.mjs: ${msg}\n`);
  process.stderr.write('usage: node mint.mjs ISSUER SUB [--client-id ID] [--nonce X]\n');
  process.exit(2);
}

function parseArgs(argv) {
  let parsed;
  try {
    parsed = nodeParseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        help: { type: 'boolean', short: 'h' },
        'client-id': { type: 'string', default: 'berth' },
        nonce: { type: 'string' },
      },
    });
  } catch (err) {
    usage(err.message);
  }
  if (parsed.values.help) usage();
  if (parsed.positionals.length !== 2) usage('need ISSUER and SUB');
  const [issuer, sub] = parsed.positionals;
  if (!sub) usage('SUB must not be empty');
  const clientId = parsed.values['client-id'];
  if (!clientId) usage('--client-id must not be empty');
  return {
    issuer, sub, clientId, nonce: parsed.values.nonce,
  };
}

const b64url = (buf) => Buffer.from(buf).toString('base64')
  .replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');

function fromB64urlJson(part, what) {
  try {
    return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
  } catch (err) {
    throw new MintError(`ID token ${what} is not base64url JSON: ${err.message}`);
  }
}

// A small cookie jar: name + path, honouring Path, Max-Age and Expires.
class CookieJar {
  constructor() { this.cookies = new Map(); }

  static splitSetCookie(headers) {
    if (typeof headers.getSetCookie === 'function') return headers.getSetCookie();
    const joined = headers.get('set-cookie');
    if (!joined) return [];
    // Joined with ", ": split only where a new "name=" starts, not inside an
    // Expires date ("Thu, 01 Jan 1970 ...").
    return joined.split(/,\s*(?=[^;,\s]+=)/);
  }

  store(url, headers) {
    for (const line of CookieJar.splitSetCookie(headers)) {
      const [pair, ...attrs] = line.split(';');
      const eq = pair.indexOf('=');
      if (eq <= 0) continue;
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      let path = url.pathname.replace(/\/[^/]*$/, '') || '/';
      let expired = false;
      for (const attr of attrs) {
        const aeq = attr.indexOf('=');
        const key = (aeq === -1 ? attr : attr.slice(0, aeq)).trim().toLowerCase();
        const val = aeq === -1 ? '' : attr.slice(aeq + 1).trim();
        if (key === 'path' && val.startsWith('/')) path = val;
        else if (key === 'max-age' && Number(val) <= 0) expired = true;
        else if (key === 'expires' && Date.parse(val) <= Date.now()) expired = true;
      }
      const id = `${name}\n${path}`;
      if (expired) this.cookies.delete(id);
      else this.cookies.set(id, { name, value, path });
    }
  }

  header(url) {
    const p = url.pathname;
    const matching = [...this.cookies.values()]
      .filter((c) => p === c.path || p.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`))
      .sort((a, b) => b.path.length - a.path.length);
    return matching.map((c) => `${c.name}=${c.value}`).join('; ');
  }
}

async function request(url, init = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
  try {
    return await fetch(url, { ...init, signal: controller.signal });
  } catch (err) {
    const cause = err.cause && err.cause.message ? ` (${err.cause.message})` : '';
    throw new MintError(`${init.method || 'GET'} ${url} failed: ${err.message}${cause}`);
  } finally {
    clearTimeout(timer);
  }
}

function describeBody(text) {
  const plain = text.replace(/<style[\s\S]*?<\/style>/gi, ' ').replace(/<[^>]+>/g, ' ')
    .replace(/\s+/g, ' ').trim();
  return plain.length > 400 ? `${plain.slice(0, 400)}...` : plain;
}

async function getJson(url, what) {
  const res = await request(url, { headers: { accept: 'application/json' } });
  const text = await res.text();
  if (!res.ok) throw new MintError(`${what}: GET ${url} gave HTTP ${res.status}: ${describeBody(text)}`);
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new MintError(`${what}: GET ${url} did not return JSON: ${err.message}`);
  }
}

async function mint({
  issuer, sub, clientId, nonce: nonceArg,
}) {
  // --- discovery
  const discoveryUrl = `${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`;
  const config = await getJson(discoveryUrl, 'discovery');
  if (config.issuer !== issuer) {
    throw new MintError(`discovery issuer ${JSON.stringify(config.issuer)} differs from ${JSON.stringify(issuer)}`);
  }
  for (const k of ['authorization_endpoint', 'token_endpoint', 'jwks_uri']) {
    if (typeof config[k] !== 'string') throw new MintError(`discovery document lacks ${k}`);
  }

  // --- authorization request
  const state = b64url(randomBytes(16));
  const nonce = nonceArg !== undefined ? nonceArg : b64url(randomBytes(16));
  const codeVerifier = b64url(randomBytes(32));
  const codeChallenge = b64url(createHash('sha256').update(codeVerifier).digest());

  const authUrl = new URL(config.authorization_endpoint);
  const params = {
    client_id: clientId,
    response_type: 'code',
    scope: 'openid',
    redirect_uri: REDIRECT_URI,
    state,
    nonce,
    login_hint: sub,
    code_challenge: codeChallenge,
    code_challenge_method: 'S256',
  };
  for (const [k, v] of Object.entries(params)) authUrl.searchParams.set(k, v);

  const jar = new CookieJar();
  const redirectBase = new URL(REDIRECT_URI);
  let url = authUrl;
  let callback;
  for (let hop = 0; hop < MAX_HOPS && !callback; hop += 1) {
    const headers = {};
    const cookie = jar.header(url);
    if (cookie) headers.cookie = cookie;
    const res = await request(url, { redirect: 'manual', headers });
    jar.store(url, res.headers);
    if (res.status < 300 || res.status >= 400) {
      const text = await res.text();
      throw new MintError(`authorization flow stopped at GET ${url.pathname}: HTTP ${res.status}: ${describeBody(text)}`);
    }
    await res.arrayBuffer(); // drain
    const location = res.headers.get('location');
    if (!location) throw new MintError(`HTTP ${res.status} from ${url.pathname} without Location`);
    const next = new URL(location, url);
    if (next.origin === redirectBase.origin && next.pathname === redirectBase.pathname) {
      callback = next;
    } else {
      url = next;
    }
  }
  if (!callback) throw new MintError(`no redirect back to ${REDIRECT_URI} after ${MAX_HOPS} hops`);

  const q = callback.searchParams;
  if (q.get('error')) {
    const desc = q.get('error_description');
    throw new MintError(`authorization error: ${q.get('error')}${desc ? `: ${desc}` : ''}`);
  }
  if (q.get('state') !== state) throw new MintError('state in the callback does not match');
  if (q.has('iss') && q.get('iss') !== issuer) {
    throw new MintError(`iss in the callback ${JSON.stringify(q.get('iss'))} differs from the issuer`);
  }
  const code = q.get('code');
  if (!code) throw new MintError(`callback without a code: ${callback}`);

  // --- code exchange
  const tokenRes = await request(config.token_endpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
    body: new URLSearchParams({
      grant_type: 'authorization_code',
      code,
      redirect_uri: REDIRECT_URI,
      client_id: clientId,
      code_verifier: codeVerifier,
    }).toString(),
  });
  const tokenText = await tokenRes.text();
  let tokens;
  try {
    tokens = JSON.parse(tokenText);
  } catch {
    throw new MintError(`token endpoint gave HTTP ${tokenRes.status}, not JSON: ${describeBody(tokenText)}`);
  }
  if (!tokenRes.ok) {
    throw new MintError(`token endpoint gave HTTP ${tokenRes.status}: ${tokens.error || ''} ${tokens.error_description || ''}`.trim());
  }
  const idToken = tokens.id_token;
  if (typeof idToken !== 'string') throw new MintError('token response has no id_token');

  // --- check the ID token as a relying party would
  const parts = idToken.split('.');
  if (parts.length !== 3) throw new MintError('id_token is not a compact JWS');
  const header = fromB64urlJson(parts[0], 'header');
  const claims = fromB64urlJson(parts[1], 'payload');
  if (header.alg !== 'RS256') throw new MintError(`unexpected alg ${header.alg}`);
  const jwks = await getJson(config.jwks_uri, 'jwks');
  const jwk = (jwks.keys || []).find((k) => k.kid === header.kid);
  if (!jwk) throw new MintError(`no key with kid ${JSON.stringify(header.kid)} in the JWKS`);
  const key = createPublicKey({ key: jwk, format: 'jwk' });
  const ok = verify('RSA-SHA256', Buffer.from(`${parts[0]}.${parts[1]}`), key, Buffer.from(parts[2], 'base64url'));
  if (!ok) throw new MintError('ID token signature does not verify against the JWKS');
  if (claims.iss !== issuer) throw new MintError(`iss ${JSON.stringify(claims.iss)} differs from the issuer`);
  const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
  if (!aud.includes(clientId)) throw new MintError(`aud ${JSON.stringify(claims.aud)} lacks ${clientId}`);
  if (claims.sub !== sub) throw new MintError(`sub ${JSON.stringify(claims.sub)} differs from ${JSON.stringify(sub)}`);
  if (claims.nonce !== nonce) throw new MintError('nonce in the ID token does not match');

  return idToken;
}

const opts = parseArgs(process.argv.slice(2));
try {
  const token = await mint(opts);
  process.stdout.write(`${token}\n`);
} catch (err) {
  process.stderr.write(`mint.mjs: ${err instanceof MintError ? err.message : (err && err.stack) || err}\n`);
  process.exit(1);
}
