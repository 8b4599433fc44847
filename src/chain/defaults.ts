/** Defaults of the chain side, in a module without viem so the CLI can show them without loading it. */

/** How long an operator has to answer an assigned job before anyone may reassign it. */
export const DEFAULT_ASSIGNMENT_TIMEOUT_SECONDS = 300;
