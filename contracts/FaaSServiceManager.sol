// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.26;

/// The FaaS blueprint's service manager, one per service: operators register with a capacity and a price, each job
/// call is assigned to the least-loaded operator, and the assignment is released when its result arrives or, after
/// its deadline, by anyone (then the job goes to another operator). Only the jobs contract may register operators,
/// assign and accept results: the original let anyone pick an operator and leaked load when a job failed.
///
/// The manager belongs to the account that deployed it (`owner`) and serves exactly one service: the first
/// `onServiceCreated`, from the jobs contract for a service that owner creates, binds it, and every hook then answers
/// only that service id. Otherwise anyone could create a second service on a real manager and load its operators
/// with jobs nobody pays for. A job's payment (msg.value of submitJob) travels with its assignment and is credited to
/// the operator that posts the result, who pulls it with `withdraw()`.
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
        // Removed by the owner: inactive and refused if it registers again.
        bool removed;
    }

    struct Assignment {
        address operator;
        uint64 deadline;
        bool done;
        uint256 payment;
    }

    uint8 public constant RELEASE_RESULT = 0;
    uint8 public constant RELEASE_TIMEOUT = 1;
    uint32 public constant DEFAULT_CAPACITY = 4;

    address public immutable jobsContract;
    uint64 public immutable assignmentTimeoutSeconds;
    /// The deployer: the only account that may create this manager's service and remove its operators.
    address public immutable owner;
    /// The one service this manager serves, valid once `bound`.
    uint64 public boundServiceId;
    bool public bound;
    /// When set by the owner, only approved addresses may register (an allow-list for a public chain, where removing
    /// operators one by one cannot keep up with fresh addresses).
    bool public approvalRequired;
    mapping(address => bool) public approved;

    address[] private operators;
    mapping(address => Operator) private info;
    mapping(uint64 => mapping(uint64 => Assignment)) private assignments;
    uint64 private assignmentCounter;
    /// Payments of answered jobs, per operator, until it withdraws them.
    mapping(address => uint256) public pendingWithdrawal;

    event OperatorRegistered(address indexed operator, uint32 capacity, uint256 pricePerJobWei);
    event OperatorUnregistered(address indexed operator);
    event JobAssigned(uint64 indexed serviceId, uint64 indexed callId, address indexed operator, uint64 deadline);
    event JobReleased(uint64 indexed serviceId, uint64 indexed callId, address indexed operator, uint8 reason);
    event ServiceBound(uint64 indexed serviceId, address indexed owner);
    event OperatorRemoved(address indexed operator);
    event ApprovalRequired(bool required);
    event OperatorApproved(address indexed operator, bool approved);
    event PaymentCredited(uint64 indexed serviceId, uint64 indexed callId, address indexed operator, uint256 amountWei);
    event Withdrawn(address indexed operator, uint256 amountWei);

    error OnlyJobsContract(address caller);
    error NoOperators();
    error NotRegistered(address operator);
    error NotAssignedOperator(uint64 callId, address operator);
    error UnknownAssignment(uint64 callId);
    error NotTimedOut(uint64 callId, uint64 deadline);
    error AssignmentDone(uint64 callId);
    error ZeroTimeout();
    error NotOwner(address caller);
    error NotManagerOwner(address creator);
    error ManagerAlreadyBound(uint64 serviceId);
    error ServiceNotBound();
    error WrongService(uint64 serviceId);
    error OperatorIsRemoved(address operator);
    error NotApproved(address operator);
    error PaymentTooLow(uint256 required);
    error NothingToWithdraw();
    error WithdrawFailed(address operator, uint256 amountWei);

    modifier onlyJobsContract() {
        if (msg.sender != jobsContract) revert OnlyJobsContract(msg.sender);
        _;
    }

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    modifier onlyBoundService(uint64 serviceId) {
        if (!bound) revert ServiceNotBound();
        if (serviceId != boundServiceId) revert WrongService(serviceId);
        _;
    }

    constructor(address jobsContract_, uint64 assignmentTimeoutSeconds_) {
        if (assignmentTimeoutSeconds_ == 0) revert ZeroTimeout();
        jobsContract = jobsContract_;
        assignmentTimeoutSeconds = assignmentTimeoutSeconds_;
        owner = msg.sender;
    }

    /// Called by the jobs contract's createService: binds this manager to that service, once, and only when the
    /// service's creator is the owner.
    function onServiceCreated(uint64 serviceId, address creator) external onlyJobsContract {
        if (bound) revert ManagerAlreadyBound(boundServiceId);
        if (creator != owner) revert NotManagerOwner(creator);
        boundServiceId = serviceId;
        bound = true;
        emit ServiceBound(serviceId, creator);
    }

    /// The owner's answer to an operator that takes jobs and never answers: it gets no new jobs and may not register
    /// again; the jobs it holds stay its own until it answers or their deadline passes (then anyone may release
    /// them). Works for an address that never registered too, which keeps it out.
    function removeOperator(address operator) external onlyOwner {
        Operator storage op = info[operator];
        op.active = false;
        op.removed = true;
        emit OperatorRemoved(operator);
    }

    /// Turns the allow-list on or off. Turning it on does not deactivate operators already registered: approve them
    /// or remove the others.
    function setApprovalRequired(bool required) external onlyOwner {
        approvalRequired = required;
        emit ApprovalRequired(required);
    }

    /// Approves (or withdraws the approval of) an address for registration while the allow-list is on. Withdrawing
    /// an approval does not deactivate a registered operator: removeOperator does.
    function approveOperator(address operator, bool isApproved) external onlyOwner {
        approved[operator] = isApproved;
        emit OperatorApproved(operator, isApproved);
    }

    /// Pays the caller the payments credited to it for answered jobs (pull, so a result never depends on a transfer).
    function withdraw() external {
        uint256 amount = pendingWithdrawal[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        pendingWithdrawal[msg.sender] = 0;
        (bool ok,) = msg.sender.call{value: amount}("");
        if (!ok) revert WithdrawFailed(msg.sender, amount);
        emit Withdrawn(msg.sender, amount);
    }

    /// registrationInputs = abi.encode(uint32 capacity, uint256 pricePerJobWei); capacity 0 means the default (4).
    /// Registering again updates capacity and price and reactivates the operator; its current load is kept.
    function onRegister(address operator, bytes calldata registrationInputs) external payable onlyJobsContract {
        (uint32 capacity, uint256 price) = abi.decode(registrationInputs, (uint32, uint256));
        if (capacity == 0) capacity = DEFAULT_CAPACITY;
        Operator storage op = info[operator];
        if (op.removed) revert OperatorIsRemoved(operator);
        if (approvalRequired && !approved[operator]) revert NotApproved(operator);
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

    /// msg.value is the job's payment: only operators whose price it covers are candidates; when there are active
    /// operators but none that cheap, the submission reverts PaymentTooLow(the lowest active price).
    function onJobCall(uint64 serviceId, uint8, uint64 jobCallId, bytes calldata)
        external
        payable
        onlyJobsContract
        onlyBoundService(serviceId)
    {
        address chosen = _leastLoaded(address(0), msg.value);
        if (chosen == address(0)) {
            (bool any, uint256 lowest) = _lowestPrice();
            if (any) revert PaymentTooLow(lowest);
            revert NoOperators();
        }
        assignments[serviceId][jobCallId].payment = msg.value;
        _assign(serviceId, jobCallId, chosen);
    }

    /// Every result releases the assignment, an error result included (that is the release on failure).
    /// The payment is credited to the operator, not sent: it takes it with withdraw().
    function onJobResult(uint64 serviceId, uint8, uint64 jobCallId, address operator, bytes32, bytes calldata)
        external
        payable
        onlyJobsContract
        onlyBoundService(serviceId)
    {
        Assignment storage a = assignments[serviceId][jobCallId];
        if (a.operator != operator || a.done) revert NotAssignedOperator(jobCallId, operator);
        a.done = true;
        Operator storage op = info[operator];
        op.load -= 1;
        op.jobsDone += 1;
        emit JobReleased(serviceId, jobCallId, operator, RELEASE_RESULT);
        if (a.payment > 0) {
            pendingWithdrawal[operator] += a.payment;
            emit PaymentCredited(serviceId, jobCallId, operator, a.payment);
        }
    }

    /// Anyone may call this once an unanswered assignment is past its deadline: the job goes to the least-loaded
    /// other active operator whose price its payment covers (back to the same one only if it is the only one).
    /// Reverts NoOperators when there is none, leaving the assignment as it was. The payment moves with the job.
    function releaseTimedOut(uint64 serviceId, uint64 callId) external {
        Assignment storage a = assignments[serviceId][callId];
        if (a.operator == address(0)) revert UnknownAssignment(callId);
        if (a.done) revert AssignmentDone(callId);
        if (block.timestamp <= a.deadline) revert NotTimedOut(callId, a.deadline);
        address previous = a.operator;
        address next = _leastLoaded(previous, a.payment);
        if (next == address(0)) next = _leastLoaded(address(0), a.payment);
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

    /// The payment that travels with a call's assignment (credited to whoever answers it).
    function paymentOf(uint64 serviceId, uint64 callId) external view returns (uint256) {
        return assignments[serviceId][callId].payment;
    }

    function _assign(uint64 serviceId, uint64 callId, address operator) private {
        uint64 deadline = uint64(block.timestamp) + assignmentTimeoutSeconds;
        Assignment storage a = assignments[serviceId][callId];
        a.operator = operator;
        a.deadline = deadline;
        a.done = false;
        Operator storage op = info[operator];
        op.load += 1;
        op.lastAssigned = ++assignmentCounter;
        emit JobAssigned(serviceId, callId, operator, deadline);
    }

    /// The active operator (other than `exclude`) whose price `payment` covers, with spare capacity and the lowest
    /// load; when all are full, the least loaded of them (the job waits in its queue). Ties go to the one assigned
    /// least recently. address(0) when there is none. A linear scan: a service has a handful of operators, not
    /// thousands.
    function _leastLoaded(address exclude, uint256 payment) private view returns (address best) {
        bool bestFull;
        uint32 bestLoad;
        uint64 bestLast;
        for (uint256 i = 0; i < operators.length; i++) {
            address candidate = operators[i];
            Operator storage op = info[candidate];
            if (!op.active || candidate == exclude || op.pricePerJobWei > payment) continue;
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

    /// The lowest price of the active operators (`any` false when none is active): what PaymentTooLow asks for.
    function _lowestPrice() private view returns (bool any, uint256 lowest) {
        for (uint256 i = 0; i < operators.length; i++) {
            Operator storage op = info[operators[i]];
            if (!op.active) continue;
            if (!any || op.pricePerJobWei < lowest) lowest = op.pricePerJobWei;
            any = true;
        }
    }
}
