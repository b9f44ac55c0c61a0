// A real ActivityPub server built with Fedify, for fed-sx's interop tests. One actor,
// /users/alice, with RSA and Ed25519 keys; it accepts every Follow, records every activity
// its inboxes take (after Fedify verified it), and is driven by the test over /control/*.
//
//   node peer.mjs            listens on a free loopback port, prints "fedify-listening <port>"
//   FIRST_KNOCK=draft-cavage-http-signatures-12  signs cavage first (default: rfc9421)
//
// allowPrivateAddress is on here only: the peer and fed-sx both run on loopback.

import http from "node:http";
import { createFederation, generateCryptoKeyPair, MemoryKvStore } from "@fedify/fedify";
import { Accept, Activity, Create, Delete, Endpoints, Follow, Note, Person, Tombstone, Undo } from "@fedify/vocab";

const firstKnock = process.env.FIRST_KNOCK ?? "rfc9421";
const federation = createFederation({ kv: new MemoryKvStore(), allowPrivateAddress: true, firstKnock });
const keys = [await generateCryptoKeyPair("RSASSA-PKCS1-v1_5"), await generateCryptoKeyPair("Ed25519")];
const received = [];
const followers = new Map();
let origin = "";

federation
  .setActorDispatcher("/users/{identifier}", async (ctx, identifier) => {
    if (identifier !== "alice") return null;
    const pairs = await ctx.getActorKeyPairs(identifier);
    return new Person({
      id: ctx.getActorUri(identifier),
      preferredUsername: identifier,
      name: "Alice on Fedify",
      inbox: ctx.getInboxUri(identifier),
      endpoints: new Endpoints({ sharedInbox: ctx.getInboxUri() }),
      followers: ctx.getFollowersUri(identifier),
      publicKey: pairs[0].cryptographicKey,
      assertionMethods: pairs.map((pair) => pair.multikey),
    });
  })
  .setKeyPairsDispatcher((_ctx, identifier) => (identifier === "alice" ? keys : []));

federation.setFollowersDispatcher("/users/{identifier}/followers", () => ({ items: [...followers.values()] }));

async function record(activity) {
  received.push({
    type: activity.constructor.name,
    id: activity.id?.href ?? null,
    actor: activity.actorId?.href ?? null,
    object: activity.objectId?.href ?? null,
    json: await activity.toJsonLd(),
  });
}

federation
  .setInboxListeners("/users/{identifier}/inbox", "/inbox")
  .on(Follow, async (ctx, follow) => {
    await record(follow);
    const follower = await follow.getActor();
    if (follower == null) return;
    followers.set(follower.id.href, follower);
    const alice = ctx.getActorUri("alice");
    await ctx.sendActivity({ identifier: "alice" }, follower, new Accept({
      id: new URL(`#accepts/${crypto.randomUUID()}`, alice),
      actor: alice,
      object: follow,
    }));
  })
  .on(Undo, async (_ctx, undo) => {
    await record(undo);
    followers.delete(undo.actorId?.href);
  })
  .on(Activity, async (_ctx, activity) => record(activity));

/// The test's handles on the peer.
async function control(url, body) {
  const ctx = federation.createContext(new URL(origin), undefined);
  const alice = ctx.getActorUri("alice");
  const sender = { identifier: "alice" };
  switch (url.pathname) {
    case "/control/received":
      return received;
    case "/control/lookup": {
      const object = await ctx.lookupObject(url.searchParams.get("url"));
      return object == null ? null : await object.toJsonLd();
    }
    case "/control/follow": {
      const target = await ctx.lookupObject(body.target);
      if (target == null) throw new Error(`cannot look up ${body.target}`);
      const follow = new Follow({ id: new URL(`#follows/${crypto.randomUUID()}`, alice), actor: alice, object: target.id });
      await ctx.sendActivity(sender, target, follow);
      return { id: follow.id.href, json: await follow.toJsonLd() };
    }
    case "/control/unfollow": {
      const target = await ctx.lookupObject(body.target);
      const follow = new Follow({ id: new URL(body.follow_id), actor: alice, object: target.id });
      const undo = new Undo({ id: new URL(`#undos/${crypto.randomUUID()}`, alice), actor: alice, object: follow });
      await ctx.sendActivity(sender, target, undo);
      return { id: undo.id.href };
    }
    case "/control/note": {
      const id = crypto.randomUUID();
      const note = new Note({
        id: new URL(`/notes/${id}`, origin),
        attribution: alice,
        content: body.content,
        to: ctx.getFollowersUri("alice"),
      });
      const create = new Create({ id: new URL(`/notes/${id}#create`, origin), actor: alice, object: note, to: ctx.getFollowersUri("alice") });
      await ctx.sendActivity(sender, "followers", create);
      return { id: create.id.href, note: note.id.href };
    }
    case "/control/delete": {
      const del = new Delete({
        id: new URL(`#deletes/${crypto.randomUUID()}`, alice),
        actor: alice,
        object: new Tombstone({ id: new URL(body.note) }),
        to: ctx.getFollowersUri("alice"),
      });
      await ctx.sendActivity(sender, "followers", del);
      return { id: del.id.href };
    }
    default:
      return undefined;
  }
}

const server = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const body = Buffer.concat(chunks);
  const url = new URL(req.url, origin);
  try {
    if (url.pathname.startsWith("/control/")) {
      const answer = await control(url, body.length ? JSON.parse(body) : {});
      if (answer === undefined) {
        res.writeHead(404).end("no such control\n");
        return;
      }
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(answer));
      return;
    }
    const request = new Request(url, {
      method: req.method,
      headers: Object.entries(req.headers).flatMap(([k, v]) => (Array.isArray(v) ? v.map((x) => [k, x]) : [[k, v]])),
      body: req.method === "GET" || req.method === "HEAD" ? undefined : body,
    });
    const response = await federation.fetch(request, { contextData: undefined });
    res.writeHead(response.status, Object.fromEntries(response.headers));
    res.end(Buffer.from(await response.arrayBuffer()));
  } catch (err) {
    console.error("peer error", err);
    res.writeHead(500).end(String(err?.stack ?? err));
  }
});

server.listen(0, "127.0.0.1", () => {
  const { port } = server.address();
  origin = `http://127.0.0.1:${port}`;
  console.log(`fedify-listening ${port}`);
});
