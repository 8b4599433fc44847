// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.26;

/// The FaaS blueprint's service manager, one per service: operators register with a capacity and a price, each job
/// call is assigned to the least-loaded operator, and the assignment is released when its result arrives or, after
/// its deadline, by anyone (then the job goes to another operator). Only the jobs contract may register operators,
/// assign and accept results: the original let anyone pick an operator and leaked load when a job failed.
contract FaaSServiceManager {
    struct Operator {
        uint32 capacity;
        uint256 pricePerJobWei;
        uint32 load;
        bool active;
        uint64 jobsDone;
        // The assignment counter's value at this operator's last assignment: ties in load go to the one that waited
        // longest, so equal operators take turns.
        uint64 lastAssigned;
        bool known;
    }

    struct Assignment {
        address operator;
        uint64 deadline;
        bool done;
    }

    uint8 public constant RELEASE_RESULT = 0;
    uint8 public constant RELEASE_TIMEOUT = 1;
    uint32 public constant DEFAULT_CAPACITY = 4;

    address public immutable jobsContract;
    uint64 public immutable assignmentTimeoutSeconds;

    address[] private operators;
    mapping(address => Operator) private info;
    mapping(uint64 => mapping(uint64 => Assignment)) private assignments;
    uint64 private assignmentCounter;

    event OperatorRegistered(address indexed operator, uint32 capacity, uint256 pricePerJobWei);
    event OperatorUnregistered(address indexed operator);
    event JobAssigned(uint64 indexed serviceId, uint64 indexed callId, address indexed operator, uint64 deadline);
    event JobReleased(uint64 indexed serviceId, uint64 indexed callId, address indexed operator, uint8 reason);

    error OnlyJobsContract(address caller);
    error NoOperators();
    error NotRegistered(address operator);
    error NotAssignedOperator(uint64 callId, address operator);
    error UnknownAssignment(uint64 callId);
    error NotTimedOut(uint64 callId, uint64 deadline);
    error AssignmentDone(uint64 callId);
    error ZeroTimeout();

    modifier onlyJobsContract() {
        if (msg.sender != jobsContract) revert OnlyJobsContract(msg.sender);
        _;
    }

    constructor(address jobsContract_, uint64 assignmentTimeoutSeconds_) {
        if (assignmentTimeoutSeconds_ == 0) revert ZeroTimeout();
        jobsContract = jobsContract_;
        assignmentTimeoutSeconds = assignmentTimeoutSeconds_;
    }

    /// registrationInputs = abi.encode(uint32 capacity, uint256 pricePerJobWei); capacity 0 means the default (4).
    /// Registering again updates capacity and price and reactivates the operator; its current load is kept.
    function onRegister(address operator, bytes calldata registrationInputs) external payable onlyJobsContract {
        (uint32 capacity, uint256 price) = abi.decode(registrationInputs, (uint32, uint256));
        if (capacity == 0) capacity = DEFAULT_CAPACITY;
        Operator storage op = info[operator];
        if (!op.known) {
            op.known = true;
            operators.push(operator);
        }
        op.capacity = capacity;
        op.pricePerJobWei = price;
        op.active = true;
        emit OperatorRegistered(operator, capacity, price);
    }

    /// An unregistered operator gets no new jobs; the ones it holds stay its own until it answers or they time out.
    function onUnregister(address operator) external onlyJobsContract {
        Operator storage op = info[operator];
        if (!op.active) revert NotRegistered(operator);
        op.active = false;
        emit OperatorUnregistered(operator);
    }

    function onJobCall(uint64 serviceId, uint8, uint64 jobCallId, bytes calldata) external payable onlyJobsContract {
        address chosen = _leastLoaded(address(0));
        if (chosen == address(0)) revert NoOperators();
        _assign(serviceId, jobCallId, chosen);
    }

    /// Every result releases the assignment, an error result included (that is the release on failure).
    function onJobResult(uint64 serviceId, uint8, uint64 jobCallId, address operator, bytes32, bytes calldata)
        external
        payable
        onlyJobsContract
    {
        Assignment storage a = assignments[serviceId][jobCallId];
        if (a.operator != operator || a.done) revert NotAssignedOperator(jobCallId, operator);
        a.done = true;
        Operator storage op = info[operator];
        op.load -= 1;
        op.jobsDone += 1;
        emit JobReleased(serviceId, jobCallId, operator, RELEASE_RESULT);
    }

    /// Anyone may call this once an unanswered assignment is past its deadline: the job goes to the least-loaded
    /// other active operator (back to the same one only if it is the only one). Reverts NoOperators when no operator
    /// is active at all, leaving the assignment as it was.
    function releaseTimedOut(uint64 serviceId, uint64 callId) external {
        Assignment storage a = assignments[serviceId][callId];
        if (a.operator == address(0)) revert UnknownAssignment(callId);
        if (a.done) revert AssignmentDone(callId);
        if (block.timestamp <= a.deadline) revert NotTimedOut(callId, a.deadline);
        address previous = a.operator;
        address next = _leastLoaded(previous);
        if (next == address(0)) next = _leastLoaded(address(0));
        if (next == address(0)) revert NoOperators();
        info[previous].load -= 1;
        emit JobReleased(serviceId, callId, previous, RELEASE_TIMEOUT);
        _assign(serviceId, callId, next);
    }

    function assignmentOf(uint64 serviceId, uint64 callId)
        external
        view
        returns (address operator, uint64 deadline, bool done)
    {
        Assignment storage a = assignments[serviceId][callId];
        return (a.operator, a.deadline, a.done);
    }

    function operatorInfo(address operator)
        external
        view
        returns (uint32 capacity, uint256 pricePerJobWei, uint32 load, bool active, uint64 jobsDone)
    {
        Operator storage op = info[operator];
        return (op.capacity, op.pricePerJobWei, op.load, op.active, op.jobsDone);
    }

    function operatorList() external view returns (address[] memory) {
        return operators;
    }

    function _assign(uint64 serviceId, uint64 callId, address operator) private {
        uint64 deadline = uint64(block.timestamp) + assignmentTimeoutSeconds;
        assignments[serviceId][callId] = Assignment({operator: operator, deadline: deadline, done: false});
        Operator storage op = info[operator];
        op.load += 1;
        op.lastAssigned = ++assignmentCounter;
        emit JobAssigned(serviceId, callId, operator, deadline);
    }

    /// The active operator (other than `exclude`) with spare capacity and the lowest load; when all are full, the
    /// least loaded of them (the job waits in its queue). Ties go to the one assigned least recently.
    /// address(0) when there is none. A linear scan: a service has a handful of operators, not thousands.
    function _leastLoaded(address exclude) private view returns (address best) {
        bool bestFull;
        uint32 bestLoad;
        uint64 bestLast;
        for (uint256 i = 0; i < operators.length; i++) {
            address candidate = operators[i];
            Operator storage op = info[candidate];
            if (!op.active || candidate == exclude) continue;
            bool full = op.load >= op.capacity;
            bool better = best == address(0) || (bestFull && !full)
                || (full == bestFull && (op.load < bestLoad || (op.load == bestLoad && op.lastAssigned < bestLast)));
            if (better) {
                best = candidate;
                bestFull = full;
                bestLoad = op.load;
                bestLast = op.lastAssigned;
            }
        }
    }
}
