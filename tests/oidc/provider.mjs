#!/usr/bin/env node
// A real OpenID Connect provider (the certified `oidc-provider` package) for
// Berth's integration tests. Listens on 127.0.0.1 only, keeps everything in
// memory, and completes every authorization request without a person: the
// interaction route below logs in as the authorization request's `login_hint`
// and grants the requested scope.
//
//   node provider.mjs [--port N] [--key-id KID] [--id-token-ttl SECONDS]
//                     [--client-id ID[,ID...]] [--extra-claims JSON]
//                     [--redirect-uri URI[,URI...]]
//
// When ready it prints exactly one line to stdout:
//   listening on http://127.0.0.1:PORT
// and serves until SIGTERM or SIGINT. Everything else goes to stderr.
//
// Written for Node.js 18 and later (Debian 12 ships Node 18).

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs as nodeParseArgs } from 'node:util';

import Provider from 'oidc-provider';

const HOST = '127.0.0.1';
const REDIRECT_URI = 'http://127.0.0.1/callback';

// Claims that oidc-provider sets itself in an ID token, whatever the account's
// claims say: an extra claim with one of these names would be silently
// replaced or dropped, so it is refused at startup instead. (`iat`, `nbf`,
// `azp`, `jti` and the like do pass through: the provider never sets `nbf`,
// and an extra `iat` replaces the real one while `exp` stays now + TTL.)
const OVERRIDDEN_CLAIMS = new Set([
  'iss', 'sub', 'aud', 'exp', 'nonce', 'auth_time', 'acr', 'amr', 'at_hash', 'c_hash', 's_hash',
]);

function usage(msg) {
  if (msg) process.stderr.write(`provider.mjs: ${msg}\n`);
  process.stderr.write(
    'usage: node provider.mjs [--port N] [--key-id KID] [--id-token-ttl SECONDS]\n'
    + '                         [--client-id ID[,ID...]] [--extra-claims JSON]\n'
    + '                         [--redirect-uri URI[,URI...]]\n',
  );
  process.exit(2);
}

function parseArgs(argv) {
  let parsed;
  try {
    parsed = nodeParseArgs({
      args: argv,
      options: {
        help: { type: 'boolean', short: 'h' },
        port: { type: 'string', default: '0' },
        'key-id': { type: 'string', default: 'k1' },
        'id-token-ttl': { type: 'string', default: '300' },
        'client-id': { type: 'string', default: 'berth' },
        'extra-claims': { type: 'string', default: '{}' },
        'redirect-uri': { type: 'string', default: REDIRECT_URI },
      },
    }).values;
  } catch (err) {
    usage(err.message);
  }
  if (parsed.help) usage();
  const port = Number(parsed.port);
  if (!/^\d+$/.test(parsed.port) || port > 65535) usage(`bad --port: ${parsed.port}`);
  if (!parsed['key-id']) usage('--key-id must not be empty');
  const ttl = Number(parsed['id-token-ttl']);
  if (!/^\d+$/.test(parsed['id-token-ttl']) || ttl < 1) {
    usage(`bad --id-token-ttl (whole seconds, >= 1): ${parsed['id-token-ttl']}`);
  }
  const clientIds = parsed['client-id'].split(',').map((s) => s.trim()).filter(Boolean);
  if (!clientIds.length) usage('--client-id must not be empty');
  let extraClaims;
  try {
    extraClaims = JSON.parse(parsed['extra-claims']);
  } catch (err) {
    usage(`--extra-claims is not JSON: ${err.message}`);
  }
  if (extraClaims === null || typeof extraClaims !== 'object' || Array.isArray(extraClaims)) {
    usage('--extra-claims must be a JSON object');
  }
  for (const name of Object.keys(extraClaims)) {
    if (OVERRIDDEN_CLAIMS.has(name)) {
      usage(`--extra-claims: "${name}" is set by the provider itself and cannot be overridden`);
    }
  }
  const redirectUris = parsed['redirect-uri'].split(',').map((s) => s.trim()).filter(Boolean);
  if (!redirectUris.length) usage('--redirect-uri must not be empty');
  return {
    port, keyId: parsed['key-id'], idTokenTtl: ttl, clientIds, extraClaims, redirectUris,
  };
}

const opts = parseArgs(process.argv.slice(2));

// oidc-provider prints its notices with console.info (stdout); stdout carries
// only the "listening on" line, so send all console output to stderr.
for (const m of ['log', 'info', 'debug']) {
  console[m] = (...args) => console.error(...args); // eslint-disable-line no-console
}

// The RS256 signing key, new on every start: a restart with another --key-id
// looks to a relying party like a key rotation.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = {
  ...privateKey.export({ format: 'jwk' }),
  kid: opts.keyId,
  alg: 'RS256',
  use: 'sig',
};

let handler = null; // set once the provider exists (it needs the bound port)
const server = createServer((req, res) => {
  if (!handler) {
    res.statusCode = 503;
    res.end('starting\n');
    return;
  }
  handler(req, res);
});

function listen(port) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, HOST, () => {
      server.off('error', reject);
      resolve(server.address().port);
    });
  });
}

let port;
try {
  port = await listen(opts.port);
} catch (err) {
  process.stderr.write(`provider.mjs: cannot listen on ${HOST}:${opts.port}: ${err.message}\n`);
  process.exit(1);
}
const issuer = `http://${HOST}:${port}`;
const extraClaimNames = Object.keys(opts.extraClaims);

const provider = new Provider(issuer, {
  clients: opts.clientIds.map((clientId) => ({
    client_id: clientId,
    // A public client: no secret, so the relying party proves itself with PKCE.
    token_endpoint_auth_method: 'none',
    // Native, so that a loopback redirect URI matches on any port (RFC 8252
    // 7.3): the tests' servers listen on ports chosen at start.
    application_type: 'native',
    redirect_uris: opts.redirectUris,
    response_types: ['code'],
    grant_types: ['authorization_code'],
    id_token_signed_response_alg: 'RS256',
  })),
  jwks: { keys: [signingJwk] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  // The extra claims ride on the `openid` scope, and with conformIdTokenClaims
  // off, scope-requested claims go into the ID token (not only /me).
  scopes: ['openid'],
  claims: { openid: ['sub', ...extraClaimNames] },
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: false },
  },
  interactions: {
    url(ctx, interaction) {
      return `/interaction/${interaction.uid}`;
    },
  },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { ...opts.extraClaims, sub: id };
      },
    };
  },
  ttl: {
    IdToken: opts.idTokenTtl,
    AccessToken: 3600,
    AuthorizationCode: 60,
    Grant: 3600,
    Interaction: 600,
    Session: 3600,
  },
});

provider.on('server_error', (ctx, err) => {
  process.stderr.write(`provider.mjs: server_error: ${err && err.stack ? err.stack : err}\n`);
});

// Finishes each interaction at once: login as login_hint, then consent to
// what was asked for, using the documented interactionDetails /
// interactionFinished API and a Grant.
async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;

  if (prompt.name === 'login') {
    const accountId = params.login_hint;
    if (typeof accountId !== 'string' || accountId === '') {
      await provider.interactionFinished(req, res, {
        error: 'login_required',
        error_description: 'this test provider logs in as the login_hint parameter, which is missing',
      }, { mergeWithLastSubmission: false });
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId } }, {
      mergeWithLastSubmission: false,
    });
    return;
  }

  if (prompt.name === 'consent') {
    const accountId = session && session.accountId;
    let grant;
    if (details.grantId) {
      grant = await provider.Grant.find(details.grantId);
    } else {
      grant = new provider.Grant({ accountId, clientId: params.client_id });
    }
    const d = prompt.details || {};
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    if (d.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(d.missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    const grantId = await grant.save();
    const consent = details.grantId ? {} : { grantId };
    await provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
    return;
  }

  await provider.interactionFinished(req, res, {
    error: 'interaction_required',
    error_description: `unsupported prompt: ${prompt.name}`,
  }, { mergeWithLastSubmission: false });
}

const providerCallback = provider.callback();
handler = (req, res) => {
  const path = (req.url || '').split('?')[0];
  if (req.method === 'GET' && path.startsWith('/interaction/')) {
    interaction(req, res).catch((err) => {
      process.stderr.write(`provider.mjs: interaction failed: ${err && err.stack ? err.stack : err}\n`);
      if (!res.headersSent) {
        res.statusCode = 400;
        res.setHeader('content-type', 'text/plain; charset=utf-8');
      }
      res.end(`interaction failed: ${err && err.message ? err.message : err}\n`);
    });
    return;
  }
  providerCallback(req, res);
};

process.stdout.write(`listening on ${issuer}\n`);

let stopping = false;
function stop(signal) {
  if (stopping) return;
  stopping = true;
  process.stderr.write(`provider.mjs: ${signal}, shutting down\n`);
  server.close(() => process.exit(0));
  // Drop keep-alive connections so close() does not wait for them.
  if (typeof server.closeAllConnections === 'function') server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
