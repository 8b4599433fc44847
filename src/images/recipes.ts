/**
 * Runtime image recipes. ONE recipe per image yields every artifact: a rootfs directory (sandbox executor), a Docker
 * image (docker executor) and, on request, an ext4 file (microvm executor). All are built from Debian packages with
 * mmdebstrap; nothing is pulled from a container registry.
 *
 * The recipe hash covers everything that shapes the output (packages, suite, sources layout, slimming rules, hooks,
 * Docker changes, BUILDER_VERSION) but not the mirror URL. Package versions are whatever the mirror serves at build
 * time; the versions actually installed are recorded in the stamp (recipe.json) next to the rootfs.
 */
import { createHash } from 'node:crypto';
import { KindlingError } from '../core/errors.js';
import type { RuntimeName } from '../core/types.js';

/** Bump when the builder's logic changes in a way the fields below do not capture. */
export const BUILDER_VERSION = 1;

export const IMAGE_SHORT_NAMES = ['base', 'python', 'node', 'rust', 'python3.13', 'node20', 'deno', 'bun', 'go', 'java'] as const;
export type ImageShortName = (typeof IMAGE_SHORT_NAMES)[number];

export interface ImageRecipe {
  /** Directory name under imagesDir and the CLI name (IMAGE_SHORT_NAMES; a custom image's own, see custom.ts). */
  readonly short: string;
  /** Docker repository, e.g. `kindling/python` (what RunSpec.image and the runtimes table use). */
  readonly name: string;
  readonly tag: string;
  /** The runtime this image serves. */
  readonly runtime: RuntimeName;
  /** Other runtime names served by this image (`node18` for `node`), accepted where an image is named. */
  readonly aliases?: readonly RuntimeName[];
  readonly description: string;
  /** The Debian release it is built from; default DEBIAN.suite (bookworm). */
  readonly suite?: string;
  /** Packages passed to `mmdebstrap --include` on top of the minbase variant. */
  readonly packages: readonly string[];
  /**
   * A shell command run inside the root (chroot, /proc mounted) after the packages are installed and before the check:
   * configuration the packages do not ship, caches the runtime would otherwise rebuild in every sandbox.
   */
  readonly setup?: string;
  /**
   * A shell command run inside the finished root (chroot, during the build, /proc mounted); a non-zero exit fails the
   * build so a broken image is never stamped as done.
   */
  readonly check: string;
  /** Environment baked into the Docker image (ENV). Sandbox executors should use the same values. */
  readonly env: Readonly<Record<string, string>>;
  /** Programs Debian does not package, taken from the npm registry (pinned version and integrity) into the root. */
  readonly npmBinaries?: readonly NpmBinary[];
  /** A custom image's files: a checked tar on the host, unpacked at `dest` in the root before the check. */
  readonly files?: ImageFiles;
}

/** Files a custom image carries. Only `sha256` and `dest` shape the image (the hash); `tarball` is where it is kept. */
export interface ImageFiles {
  readonly tarball: string;
  readonly sha256: string;
  /** Absolute directory in the root, e.g. `/opt/app`. */
  readonly dest: string;
}

/**
 * One executable inside an npm package's tarball (Deno's and Bun's Linux builds ship as npm packages). The version and
 * the tarball's sha512 integrity are pinned here: a different download fails the build instead of changing the image.
 */
export interface NpmBinary {
  /** The package, e.g. `@deno/linux-x64-glibc`. */
  readonly package: string;
  readonly version: string;
  /** The registry's `dist.integrity` of that version (`sha512-<base64>`). */
  readonly integrity: string;
  /** The file inside the tarball, e.g. `package/deno`. */
  readonly entry: string;
  /** Where it goes in the root, mode 0755, e.g. `/usr/local/bin/deno`. */
  readonly target: string;
}

/** Debian parameters shared by every image. */
export const DEBIAN = {
  suite: 'bookworm',
  variant: 'minbase',
  components: ['main'],
  /** Suites written to sources.list, `{suite}` replaced. Security comes from `securityMirror`. */
  suites: ['{suite}', '{suite}-updates'],
  securitySuite: '{suite}-security',
  defaultMirror: 'http://deb.debian.org/debian',
  defaultSecurityMirror: 'http://deb.debian.org/debian-security',
} as const;

/**
 * Slimming: paths dpkg never unpacks (copyright files are kept for licence compliance), plus hook snippets run at the
 * end of the build. `$1` is the root directory (mmdebstrap hook convention).
 */
export const SLIMMING = {
  dpkgPathExclude: [
    '/usr/share/doc/*',
    '/usr/share/man/*',
    '/usr/share/info/*',
    '/usr/share/locale/*',
    '/usr/share/lintian/*',
    '/usr/share/linda/*',
  ],
  dpkgPathInclude: ['/usr/share/doc/*/copyright'],
  cleanup: [
    'rm -rf "$1"/var/log/apt/* "$1"/var/log/dpkg.log "$1"/var/log/alternatives.log',
    'rm -f "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old',
  ],
} as const;

/** Steps every rootfs gets: mount points for the executors and the unprivileged user they run code as. */
export const COMMON_CUSTOMIZE = [
  'mkdir -p "$1/work" "$1/.kindling"',
  'chmod 0755 "$1/work" "$1/.kindling"',
  // The executors run user code as nobody (65534); fail the build if the base image ever loses it.
  'grep -q "^nobody:x:65534:65534:" "$1/etc/passwd"',
] as const;

const PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const BASE_ENV = { PATH, LANG: 'C.UTF-8' } as const;

function recipe(r: ImageRecipe): ImageRecipe {
  return Object.freeze({
    ...r,
    packages: Object.freeze([...r.packages]),
    env: Object.freeze({ ...r.env }),
    ...(r.aliases ? { aliases: Object.freeze([...r.aliases]) } : {}),
    ...(r.npmBinaries ? { npmBinaries: Object.freeze(r.npmBinaries.map((b) => Object.freeze({ ...b }))) } : {}),
  });
}

export const IMAGE_RECIPES: Readonly<Record<ImageShortName, ImageRecipe>> = Object.freeze({
  base: recipe({
    short: 'base',
    name: 'kindling/base',
    tag: 'latest',
    runtime: 'bash',
    description: 'Debian bookworm minbase: bash, coreutils',
    packages: [],
    check: 'bash -c "echo ok" >/dev/null && ls / >/dev/null',
    env: BASE_ENV,
  }),
  python: recipe({
    short: 'python',
    name: 'kindling/python',
    tag: 'latest',
    runtime: 'python3.11',
    description: "Debian's python3 (3.11) with the full standard library",
    // python3 pulls libpython3.11-stdlib; distutils (and lib2to3) are split out by Debian.
    packages: ['python3', 'python3-distutils'],
    check:
      'python3 -c "import sqlite3, ssl, ctypes, decimal, lzma, bz2, zlib, hashlib, json, zoneinfo, distutils.core; ' +
      "zoneinfo.ZoneInfo('Europe/Paris')\"",
    env: { ...BASE_ENV, PYTHONDONTWRITEBYTECODE: '1' },
  }),
  node: recipe({
    short: 'node',
    name: 'kindling/node',
    tag: 'latest',
    runtime: 'node18',
    description: "Debian bookworm's nodejs 18.x",
    packages: ['nodejs'],
    // Sources are Debian's only (never the host's, which may carry nodesource); assert the major to stay deterministic.
    check: 'node -e "process.exit(process.versions.node.split(\'.\')[0] === \'18\' ? 0 : 1)"',
    env: BASE_ENV,
  }),
  // The current releases beside bookworm's (Debian trixie, through the same mirror): selectable by runtime name.
  'python3.13': recipe({
    short: 'python3.13',
    name: 'kindling/python3.13',
    tag: 'latest',
    runtime: 'python3.13',
    // `python` (the runtime) means the newest: this image.
    aliases: ['python'],
    description: "Debian trixie's python3 (3.13) with the full standard library",
    suite: 'trixie',
    // python3-pip-whl: trixie's pip wheel (1.5 MB), which dependency builds run; the host's bookworm pip 23 fails on 3.13.
    packages: ['python3', 'python3-pip-whl'],
    check:
      'python3 -c "import sys, sqlite3, ssl, ctypes, decimal, lzma, bz2, zlib, hashlib, json, zoneinfo; ' +
      "zoneinfo.ZoneInfo('Europe/Paris'); sys.exit(0 if sys.version_info[:2] == (3, 13) else 1)\"",
    env: { ...BASE_ENV, PYTHONDONTWRITEBYTECODE: '1' },
  }),
  node20: recipe({
    short: 'node20',
    name: 'kindling/node20',
    tag: 'latest',
    runtime: 'node20',
    aliases: ['node'],
    description: "Debian trixie's nodejs 20.x",
    suite: 'trixie',
    packages: ['nodejs'],
    check: 'node -e "process.exit(process.versions.node.split(\'.\')[0] === \'20\' ? 0 : 1)"',
    env: BASE_ENV,
  }),
  // TypeScript runtimes: Deno's and Bun's own Linux builds (Debian packages neither), on bookworm's glibc.
  deno: recipe({
    short: 'deno',
    name: 'kindling/deno',
    tag: 'latest',
    runtime: 'deno',
    description: 'Deno 2.x (TypeScript and JavaScript; types stripped, not checked)',
    // libgcc-s1 is in minbase already; ca-certificates lets code that is given egress verify TLS.
    packages: ['ca-certificates'],
    npmBinaries: [
      {
        package: '@deno/linux-x64-glibc',
        version: '2.9.6',
        integrity: 'sha512-3md4TKLCuzsLDmfOoC5KN7NAZaxSVkMgm64vg6foD00JBADCpYS2/5QqXfzgnP5ZQz3iLP9vBQJtEgc116OAoQ==',
        entry: 'package/deno',
        target: '/usr/local/bin/deno',
      },
    ],
    check: 'd=$(mktemp -d) && printf "const n: number = 41; console.log(n + 1)" > "$d/k.ts" && test "$(DENO_DIR=$d/cache deno run --quiet "$d/k.ts")" = 42 && rm -rf "$d"',
    env: { ...BASE_ENV, DENO_NO_UPDATE_CHECK: '1', DENO_NO_PROMPT: '1' },
  }),
  bun: recipe({
    short: 'bun',
    name: 'kindling/bun',
    tag: 'latest',
    runtime: 'bun',
    description: 'Bun 1.x (TypeScript and JavaScript; types stripped, not checked)',
    packages: ['ca-certificates'],
    npmBinaries: [
      {
        package: '@oven/bun-linux-x64',
        version: '1.4.5',
        integrity: 'sha512-IWX9BELoGHAUtMonkeSaNaZwXzRk+oDw6Mk+HBFXd3KHYIBNBsIGRupMZPcgNoDbJpLu6gAJjIoIVPZtt1aJ1g==',
        entry: 'package/bin/bun',
        target: '/usr/local/bin/bun',
      },
    ],
    check: 'd=$(mktemp -d) && printf "const n: number = 41; console.log(n + 1)" > "$d/k.ts" && test "$(bun "$d/k.ts")" = 42 && rm -rf "$d"',
    env: BASE_ENV,
  }),
  go: recipe({
    short: 'go',
    name: 'kindling/go',
    tag: 'latest',
    runtime: 'go',
    description: "Debian trixie's Go toolchain (1.24), its standard library compiled into the image's build cache",
    suite: 'trixie',
    // gcc + libc6-dev: cgo (net, os/user) links with them; without, CGO_ENABLED=0 builds still work.
    packages: ['golang-go', 'gcc', 'libc6-dev', 'ca-certificates'],
    // Go 1.20+ ships no compiled standard library: every fresh sandbox would compile fmt's dependencies (about 6 s
    // here). It is compiled once into a cache in the image, which go.env names; go only reads a cache it cannot write
    // (the sandbox executor's root is read-only), so a program's own packages are compiled each run, the library not.
    // GOTOOLCHAIN=local: a go.mod asking for a newer Go fails plainly instead of trying to download one.
    // trim.txt: every go build trims the cache once its last trim is a day old, and a trim that cannot write trim.txt
    // fails the build ("go: failed to trim cache"), so a day after the image was made every compile failed. It links
    // to a file in the sandbox's own writable /tmp: the trim's removals fail quietly in the read-only cache, its
    // timestamp is written there.
    setup:
      // go.env's first setting of a name wins: GOTOOLCHAIN=auto is replaced in place, not overridden below it.
      'set -e; env="$(go env GOROOT)/go.env"; sed -i "s/^GOTOOLCHAIN=.*/GOTOOLCHAIN=local/" "$env"; grep -qx GOTOOLCHAIN=local "$env"; ' +
      'printf "\\nGOCACHE=/var/cache/go-build\\n" >> "$env"; ' +
      'go build std && CGO_ENABLED=0 go build std && chmod -R a+rX /var/cache/go-build && ln -sfn /tmp/go-cache-trim.txt /var/cache/go-build/trim.txt',
    check:
      'd=$(mktemp -d) && printf "package main\\nimport \\"fmt\\"\\nfunc main() { fmt.Println(6 * 7) }\\n" > "$d/m.go" && ' +
      'test "$(cd "$d" && GOCACHE=$d/c GOPATH=$d/p go run m.go)" = 42 && rm -rf "$d"',
    env: { ...BASE_ENV },
  }),
  java: recipe({
    short: 'java',
    name: 'kindling/java',
    tag: 'latest',
    runtime: 'java',
    description: "Debian trixie's OpenJDK 21 (headless JDK: java, javac, jar)",
    suite: 'trixie',
    packages: ['openjdk-21-jdk-headless'],
    check: 'd=$(mktemp -d) && printf "class M { public static void main(String[] a) { System.out.println(6 * 7); } }" > "$d/M.java" && test "$(java "$d/M.java")" = 42 && rm -rf "$d"',
    env: BASE_ENV,
  }),
  rust: recipe({
    short: 'rust',
    name: 'kindling/rust',
    tag: 'latest',
    runtime: 'rust',
    description: "Debian's rustc and cargo (bundles build offline, with vendored crates) with gcc and libc6-dev to link",
    packages: ['rustc', 'cargo', 'gcc', 'libc6-dev'],
    check:
      'd=$(mktemp -d) && printf "fn main(){println!(\\"hi\\")}" > "$d/k.rs" && rustc -o "$d/k" "$d/k.rs" && ' +
      'test "$("$d/k")" = hi && cargo --version && rm -rf "$d"',
    env: BASE_ENV,
  }),
});

export function imageRef(r: ImageRecipe): string {
  return `${r.name}:${r.tag}`;
}

/** Options of a build that change its output and therefore the hash. */
export interface RecipeHashInputs {
  suite?: string;
}

/** The canonical object hashed for a recipe. Exported for tests and for `images list --json` diagnostics. */
export function recipeFingerprint(r: ImageRecipe, inputs: RecipeHashInputs = {}): Record<string, unknown> {
  const suite = inputs.suite ?? r.suite ?? DEBIAN.suite;
  return {
    builderVersion: BUILDER_VERSION,
    short: r.short,
    name: r.name,
    tag: r.tag,
    suite,
    variant: DEBIAN.variant,
    components: [...DEBIAN.components],
    suites: DEBIAN.suites.map((s) => s.replace('{suite}', suite)).concat(DEBIAN.securitySuite.replace('{suite}', suite)),
    // Order of --include does not matter to apt; sort so reordering a list does not force a rebuild.
    packages: [...new Set(r.packages)].sort(),
    ...(r.npmBinaries ? { npmBinaries: r.npmBinaries.map((b) => sortedObject({ ...b })) } : {}),
    ...(r.setup !== undefined ? { setup: r.setup } : {}),
    ...(r.files !== undefined ? { files: { sha256: r.files.sha256, dest: r.files.dest } } : {}),
    check: r.check,
    env: sortedObject(r.env),
    slimming: SLIMMING,
    customize: COMMON_CUSTOMIZE,
  };
}

/** sha256 (hex) of the canonical JSON of the recipe fingerprint. Stable across runs, key order and package order. */
export function recipeHash(r: ImageRecipe, inputs: RecipeHashInputs = {}): string {
  return createHash('sha256').update(canonicalJson(recipeFingerprint(r, inputs))).digest('hex');
}

/** JSON with object keys sorted at every level (arrays keep their order). */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v !== null && typeof v === 'object' && !Array.isArray(v) ? sortedObject(v as Record<string, unknown>) : v,
  );
}

function sortedObject<T>(o: Readonly<Record<string, T>>): Record<string, T> {
  const out: Record<string, T> = {};
  for (const k of Object.keys(o).sort()) out[k] = o[k] as T;
  return out;
}

/**
 * Resolves what a user typed (`python`, `kindling/python`, `kindling/python:latest`, or a runtime name such as `bash`)
 * to recipes, de-duplicated, in IMAGE_SHORT_NAMES order. An empty list means all images.
 */
export function resolveImageNames(names: readonly string[] = []): ImageRecipe[] {
  if (names.length === 0) return IMAGE_SHORT_NAMES.map((s) => IMAGE_RECIPES[s]);
  const wanted = new Set<ImageShortName>();
  for (const raw of names) {
    const r = findRecipe(raw);
    if (!r) {
      throw new KindlingError('UNKNOWN_IMAGE', `unknown image "${raw}" (known: ${IMAGE_SHORT_NAMES.join(', ')})`, {
        details: { image: raw, known: [...IMAGE_SHORT_NAMES] },
      });
    }
    wanted.add(r.short as ImageShortName);
  }
  return IMAGE_SHORT_NAMES.filter((s) => wanted.has(s)).map((s) => IMAGE_RECIPES[s]);
}

export function findRecipe(nameOrShort: string): ImageRecipe | undefined {
  const n = nameOrShort.trim();
  for (const s of IMAGE_SHORT_NAMES) {
    const r = IMAGE_RECIPES[s];
    if (n === r.short || n === r.name || n === imageRef(r) || n === r.runtime || (r.aliases as readonly string[] | undefined)?.includes(n)) return r;
  }
  return undefined;
}
