// make test-host's Cockpit check (tests/host/run.sh runs it while the
// test host waits): headless Chromium logs in through Cockpit's real login
// page with a password, as the VM's snpguard-admin member and then as an
// ordinary user, against the packaged page, snpguardd and polkitd.
//
//   node host.mjs BASE_URL OUT_DIR
//
// The admin sees the records the checks registered and disables and
// re-enables "web"; the ordinary user sees them too, and the same button
// is refused with "Not permitted", changing nothing. Screenshots go to
// OUT_DIR. Exits non-zero with the reason on the first failure.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const [base, out] = process.argv.slice(2);
if (!base || !out) {
    console.error("usage: node host.mjs BASE_URL OUT_DIR");
    process.exit(2);
}
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
// Everything runs under TCG in the VM: be patient.
const UI_TIMEOUT = 180_000;
// The logins tests/host/checks.sh creates.
const ADMIN = { user: "hostadmin", password: "hosttest-admin-pw" };
const USER = { user: "hostuser", password: "hosttest-user-pw" };

fs.mkdirSync(out, { recursive: true });
const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
}).catch(e => { throw new Error("starting Chromium (" + CHROMIUM + "): " + e.message); });

/** The page in use, for the failure's screenshot. */
let current = null;

/** Logs in as `who` through the login page and opens SnpGuard in the shell. */
async function session(who) {
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    const page = await context.newPage();
    page.setDefaultTimeout(UI_TIMEOUT);
    const shot = name => page.screenshot({ path: path.join(out, `${who.user}-${name}.png`) });
    await page.goto(base + "/");
    await page.fill("#login-user-input", who.user);
    await page.fill("#login-password-input", who.password);
    await shot("login");
    await page.click("#login-button");
    // The shell replaces the login page once the session is up.
    await page.waitForSelector("#login-user-input", { state: "detached" });
    current = { page, who };
    // The shell's navigation lists SnpGuard; it opens in the shell's frame.
    const nav = page.locator("a", { hasText: "SnpGuard" }).first();
    await nav.waitFor();
    await shot("shell");
    await nav.click();
    await page.waitForURL(/\/snpguard/);
    const frame = page.frameLocator('iframe[name="cockpit1:localhost/snpguard"]');
    await frame.locator("body[data-ready=true]").waitFor();
    console.log(`${who.user}: logged in, SnpGuard open`);
    return { context, page, frame, shot };
}

async function openRecord(frame, name) {
    await frame.locator("#tab-records").click();
    await frame.locator(`#records-body tr[data-record="${name}"]`).waitFor();
    await frame.locator(`#records-body tr[data-record="${name}"] a.sg-record-link`).click();
    await frame.locator("#record-fields").waitFor();
}

try {
    // The admin: both records listed; disable, then enable again.
    {
        const s = await session(ADMIN);
        await s.frame.locator('#records-body tr[data-record="db"]').waitFor();
        assert.match(await s.frame.locator('#records-body tr[data-record="web"]').innerText(), /Enabled/);
        await s.shot("records");
        await openRecord(s.frame, "web");
        const toggle = s.frame.locator("#record-toggle");
        assert.equal(await toggle.innerText(), "Disable");
        await toggle.click();
        await s.frame.locator("#record-toggle", { hasText: "Enable" }).waitFor();
        await s.shot("disabled");
        await s.frame.locator("#record-toggle").click();
        await s.frame.locator("#record-toggle", { hasText: "Disable" }).waitFor();
        assert.equal(await s.frame.locator('.sg-alert[data-kind="error"]').count(), 0);
        await s.shot("enabled");
        await s.context.close();
    }
    // The ordinary user: may look, is refused the change, changes nothing.
    {
        const s = await session(USER);
        await s.frame.locator('#records-body tr[data-record="db"]').waitFor();
        await openRecord(s.frame, "web");
        await s.frame.locator("#record-toggle").click();
        const alert = s.frame.locator('.sg-alert[data-kind="error"]', { hasText: "Not permitted" });
        await alert.waitFor();
        await s.shot("not-permitted");
        assert.equal(await s.frame.locator("#record-toggle").innerText(), "Disable");
        await s.context.close();
    }
    console.log("host Cockpit: ok");
} catch (e) {
    console.error("host Cockpit: " + (e && e.stack || e));
    // What the browser showed, for the log.
    if (current) {
        await current.page.screenshot({ path: path.join(out, `${current.who.user}-failure.png`) })
            .catch(() => {});
        console.error("at " + current.page.url() + "; frames: " +
                      current.page.frames().map(f => `${f.name()} ${f.url()}`).join(", "));
    }
    process.exitCode = 1;
} finally {
    await browser.close();
}
