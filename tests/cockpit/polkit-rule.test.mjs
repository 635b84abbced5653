// The polkit rule dbus/50-org.snpguard.SnpGuard1.rules, evaluated as
// polkitd evaluates rules files (one script calling polkit.addRule):
// members of snpguard-admin get YES for every SnpGuard action in the
// policy file and nothing else; everyone else is left to the defaults.
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import url from "node:url";

const REPO = path.resolve(path.dirname(url.fileURLToPath(import.meta.url)), "../..");
const RULES = fs.readFileSync(path.join(REPO, "dbus/50-org.snpguard.SnpGuard1.rules"), "utf8");
const POLICY = fs.readFileSync(path.join(REPO, "dbus/org.snpguard.SnpGuard1.policy"), "utf8");
const ACTIONS = [...POLICY.matchAll(/<action id="([^"]+)"/g)].map(m => m[1]);

function loadRules() {
    const rules = [];
    const polkit = {
        Result: { YES: "yes", NO: "no", AUTH_ADMIN: "auth_admin", NOT_HANDLED: null },
        addRule: f => rules.push(f),
    };
    new Function("polkit", RULES)(polkit);
    return { rules, polkit };
}

function subject(groups) {
    return { user: "alice", local: false, active: false, isInGroup: g => groups.includes(g) };
}

test("snpguard-admin members get every SnpGuard action, nobody else anything", () => {
    const { rules, polkit } = loadRules();
    assert.equal(rules.length, 1);
    const decide = (id, groups) => rules[0]({ id }, subject(groups));
    assert.ok(ACTIONS.length >= 5, "actions read from the policy: " + ACTIONS);
    for (const id of ACTIONS) {
        assert.equal(decide(id, ["snpguard-admin"]), polkit.Result.YES, id);
        assert.equal(decide(id, ["users", "sudo"]), polkit.Result.NOT_HANDLED, id);
    }
    assert.equal(decide("org.freedesktop.systemd1.manage-units", ["snpguard-admin"]), polkit.Result.NOT_HANDLED);
    assert.equal(decide("org.snpguard.SnpGuard1", ["snpguard-admin"]), polkit.Result.NOT_HANDLED);
});
