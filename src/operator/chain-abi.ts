/**
 * The contract surface the operator uses, beside the pinned ITangleJobs subset (@kindling/sdk/tangle): the custom
 * errors it must tell apart (decoded from reverts), the local jobs contract's operator registration, and the FaaS
 * service manager's calls. Written from the shared interface (not from the compiled artifacts), so the operator talks
 * to any deployment that implements it.
 */
import { parseAbi } from 'viem';
import { TANGLE_JOBS_ABI } from '@kindling/sdk/tangle';
import { SERVICE_MANAGER_EVENTS_ABI } from './watcher.js';

const ERRORS = parseAbi([
  'error UnknownJobCall(uint64 serviceId, uint64 callId)',
  'error JobAlreadyCompleted(uint64 serviceId, uint64 callId)',
  'error NotAssignedOperator(uint64 callId, address operator)',
  'error OnlyJobsContract(address caller)',
  'error NoOperators()',
  'error NotTimedOut(uint64 callId, uint64 deadline)',
  'error AssignmentDone(uint64 callId)',
]);

export const JOBS_CONTRACT_ABI = [
  ...TANGLE_JOBS_ABI,
  ...ERRORS,
  ...parseAbi(['function registerOperator(uint64 serviceId, bytes registrationInputs)', 'function unregisterOperator(uint64 serviceId)']),
] as const;

export const SERVICE_MANAGER_ABI = [
  ...SERVICE_MANAGER_EVENTS_ABI,
  ...ERRORS,
  ...parseAbi([
    'function releaseTimedOut(uint64 serviceId, uint64 callId)',
    'function assignmentOf(uint64 serviceId, uint64 callId) view returns (address operator, uint64 deadline, bool done)',
    'function operatorInfo(address operator) view returns (uint32 capacity, uint256 pricePerJobWei, uint32 load, bool active, uint64 jobsDone)',
    'function operatorList() view returns (address[])',
  ]),
] as const;
