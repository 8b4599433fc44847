// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.26;

/// Tangle's Types.JobCall as the jobs contract returns it (same field order and types).
struct JobCallInfo {
    uint8 jobIndex;
    address caller;
    uint64 createdAt;
    uint32 resultCount;
    bool completed;
    bool isRFQ;
    uint256 payment;
}

/// What the manager calls on its jobs contract: the caller of a call (instances belong to a caller), and posting the
/// error result of a job whose instance holder is gone.
interface IJobsForManager {
    function getJobCall(uint64 serviceId, uint64 callId) external view returns (JobCallInfo memory);
    function submitResult(uint64 serviceId, uint64 callId, bytes calldata result) external;
}

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
///
/// Instances (persistent sandboxes, snapshots, branches) live on the operator that made them: a job that names one
/// (jobs 2-11, job 1 in modes persistent and branched) goes to that operator, its holder, recorded per caller when the
/// result of the job that made the id (jobs 2-6, job 1 checkpointed as `call:N`) was accepted. Such a job is never
/// reassigned: past its deadline it fails on chain with INSTANCE_HOLDER_GONE and its payment goes back to the caller.
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
        /// Position in `operators` + 1; 0 when not listed (never registered, unregistered or removed).
        uint256 listedAt;
        // Removed by the owner: inactive and refused if it registers again.
        bool removed;
    }

    struct Assignment {
        address operator;
        uint64 deadline;
        bool done;
        uint256 payment;
        /// The call names an instance: it stays with its holder (no reassignment on timeout).
        bool pinned;
        /// The result (when not an error) is an id made on the assignee (jobs 2-6), or the call made a checkpoint
        /// `call:<callId>` (job 1 checkpointed): the assignee is recorded as its holder.
        bool recordsHolder;
        /// Failed by the manager on timeout (INSTANCE_HOLDER_GONE): the manager itself posts that result.
        bool failing;
        address caller;
    }

    uint8 public constant RELEASE_RESULT = 0;
    uint8 public constant RELEASE_TIMEOUT = 1;
    /// Released because the holder of the instance the job names did not answer in time: the job failed.
    uint8 public constant RELEASE_HOLDER_GONE = 2;
    uint32 public constant DEFAULT_CAPACITY = 4;
    /// The most operators registered at once: each job submission scans them all (four cold storage reads, roughly 8k gas, each), so an unbounded
    /// list would let registrations push submissions past the block gas limit.
    uint256 public constant MAX_OPERATORS = 32;

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
    /// keccak256(abi.encode(caller, keccak256(id))) -> the operator that made the caller's instance, snapshot or
    /// branch `id`. Keyed by caller: an operator can only claim ids in answer to that caller's own jobs.
    mapping(bytes32 => address) private holders;
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
    error TooManyOperators(uint256 max);
    error InstanceHolderGone(address holder);

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
        _unlist(operator);
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
        if (op.listedAt == 0) {
            if (operators.length >= MAX_OPERATORS) revert TooManyOperators(MAX_OPERATORS);
            operators.push(operator);
            op.listedAt = operators.length;
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
        _unlist(operator);
        emit OperatorUnregistered(operator);
    }

    /// msg.value is the job's payment: only operators whose price it covers are candidates; when there are active
    /// operators but none that cheap, the submission reverts PaymentTooLow(the lowest active price).
    /// A job naming an instance with a recorded holder goes to that holder (InstanceHolderGone when it is no longer
    /// active, PaymentTooLow when its price is above the payment), however loaded it is.
    function onJobCall(uint64 serviceId, uint8 job, uint64 jobCallId, bytes calldata inputs)
        external
        payable
        onlyJobsContract
        onlyBoundService(serviceId)
    {
        Assignment storage a = assignments[serviceId][jobCallId];
        if (job >= 1 && job <= 11) {
            address caller = IJobsForManager(jobsContract).getJobCall(serviceId, jobCallId).caller;
            (bool names, bytes calldata id, bool records) = _instanceArg(job, inputs);
            a.caller = caller;
            a.recordsHolder = records;
            if (names) {
                address holder = holders[_holderKey(caller, id)];
                if (holder != address(0)) {
                    Operator storage h = info[holder];
                    if (!h.active) revert InstanceHolderGone(holder);
                    if (h.pricePerJobWei > msg.value) revert PaymentTooLow(h.pricePerJobWei);
                    a.pinned = true;
                    a.payment = msg.value;
                    _assign(serviceId, jobCallId, holder);
                    return;
                }
            }
        }
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
    function onJobResult(uint64 serviceId, uint8 job, uint64 jobCallId, address operator, bytes32, bytes calldata outputs)
        external
        payable
        onlyJobsContract
        onlyBoundService(serviceId)
    {
        Assignment storage a = assignments[serviceId][jobCallId];
        // The manager's own INSTANCE_HOLDER_GONE result (from releaseTimedOut, which did the accounting).
        if (operator == address(this) && a.failing) return;
        if (a.operator != operator || a.done) revert NotAssignedOperator(jobCallId, operator);
        if (a.recordsHolder) _recordHolder(a.caller, job, jobCallId, operator, outputs);
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
        if (a.pinned) {
            _failHolderGone(serviceId, callId, a, previous);
            return;
        }
        address next = _leastLoaded(previous, a.payment);
        if (next == address(0)) next = _leastLoaded(address(0), a.payment);
        if (next == address(0)) revert NoOperators();
        info[previous].load -= 1;
        emit JobReleased(serviceId, callId, previous, RELEASE_TIMEOUT);
        _assign(serviceId, callId, next);
    }

    /// The operator holding `caller`'s instance, snapshot or branch `id` (address(0) when none is recorded).
    function holderOf(address caller, string calldata id) external view returns (address) {
        return holders[_holderKey(caller, bytes(id))];
    }

    /// Whether the call stays with its operator (it names an instance with a recorded holder).
    function isPinned(uint64 serviceId, uint64 callId) external view returns (bool) {
        return assignments[serviceId][callId].pinned;
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

    /// A pinned job past its deadline: its holder (the only operator that has the instance) did not answer, so the job
    /// cannot run anywhere else. The manager posts the error result through the jobs contract, so the caller reads a
    /// stable code on chain, and the payment goes back to the caller (withdraw()).
    function _failHolderGone(uint64 serviceId, uint64 callId, Assignment storage a, address holder) private {
        a.done = true;
        a.failing = true;
        info[holder].load -= 1;
        emit JobReleased(serviceId, callId, holder, RELEASE_HOLDER_GONE);
        if (a.payment > 0) {
            pendingWithdrawal[a.caller] += a.payment;
            emit PaymentCredited(serviceId, callId, a.caller, a.payment);
        }
        IJobsForManager(jobsContract).submitResult(
            serviceId,
            callId,
            abi.encodeWithSignature(
                "KindlingJobError(string,string)",
                "INSTANCE_HOLDER_GONE",
                "the operator holding the instance this job names did not answer before the deadline; the instance is lost with it: start a new one (job 6) and submit again"
            )
        );
    }

    /// Records the assignee as the holder of the id its result names (jobs 2-6: the output is abi.encode(string)) or
    /// of the checkpoint `call:<callId>` (job 1). An error result records nothing; a holder already recorded is kept
    /// (first answer wins).
    function _recordHolder(address caller, uint8 job, uint64 callId, address operator, bytes calldata outputs) private {
        if (outputs.length >= 4 && bytes4(outputs[0:4]) == bytes4(keccak256("KindlingJobError(string,string)"))) return;
        bytes32 key;
        if (job == 1) {
            key = _holderKey(caller, bytes(string.concat("call:", _decimal(callId))));
        } else {
            if (outputs.length % 32 != 0) return;
            (bool ok, bytes calldata id) = _stringAt(outputs, 0, 0);
            if (!ok || id.length == 0) return;
            key = _holderKey(caller, id);
        }
        if (holders[key] == address(0)) holders[key] = operator;
    }

    function _holderKey(address caller, bytes memory id) private pure returns (bytes32) {
        return keccak256(abi.encode(caller, keccak256(id)));
    }

    /// Which argument of job `job` names an instance, snapshot or branch (jobs 2-4, 6-11: the first; 5: the first of
    /// the branch list; 1: checkpointId in mode persistent, branchFrom in mode branched), and whether the job makes
    /// an id whose holder its result records (2-6; 1 in mode checkpointed). Malformed inputs name nothing: the
    /// operator that gets the job answers INPUT_UNDECODABLE.
    function _instanceArg(uint8 job, bytes calldata inputs) private pure returns (bool names, bytes calldata id, bool records) {
        id = inputs[0:0];
        if (job == 1) {
            (bool modeOk, bytes calldata mode) = _stringAt(inputs, 0, 4 * 32);
            if (!modeOk) return (false, id, false);
            bytes32 m = keccak256(mode);
            if (m == keccak256("checkpointed")) return (false, id, true);
            uint256 arg = m == keccak256("persistent") ? 5 : m == keccak256("branched") ? 6 : 0;
            if (arg == 0) return (false, id, false);
            (modeOk, id) = _stringAt(inputs, 0, arg * 32);
            return (modeOk && id.length > 0, id, false);
        }
        records = job >= 2 && job <= 6;
        bool ok;
        if (job == 5) {
            (bool okList, uint256 list) = _offsetAt(inputs, 0, 0);
            // The list's length word, then its element heads (offsets relative to the first head).
            if (!okList || uint256(bytes32(inputs[list:list + 32])) == 0) return (false, id, records);
            (ok, id) = _stringAt(inputs, list + 32, list + 32);
        } else {
            (ok, id) = _stringAt(inputs, 0, 0);
        }
        names = ok && id.length > 0;
    }

    /// The absolute position of a dynamic value whose head (an offset relative to `base`) is at `head`.
    function _offsetAt(bytes calldata data, uint256 base, uint256 head) private pure returns (bool ok, uint256 pos) {
        if (data.length < 32 || head > data.length - 32) return (false, 0);
        uint256 offset = uint256(bytes32(data[head:head + 32]));
        if (offset > data.length || base > data.length - offset) return (false, 0);
        pos = base + offset;
        ok = pos <= data.length - 32;
    }

    /// The ABI-encoded string whose head is at `head` (offset relative to `base`); ok false when out of bounds.
    function _stringAt(bytes calldata data, uint256 base, uint256 head) private pure returns (bool ok, bytes calldata value) {
        value = data[0:0];
        uint256 pos;
        (ok, pos) = _offsetAt(data, base, head);
        if (!ok) return (false, value);
        uint256 length = uint256(bytes32(data[pos:pos + 32]));
        if (length > data.length - pos - 32) return (false, value);
        value = data[pos + 32:pos + 32 + length];
    }

    function _decimal(uint64 value) private pure returns (string memory) {
        if (value == 0) return "0";
        bytes memory digits = new bytes(20);
        uint256 i = 20;
        while (value > 0) {
            digits[--i] = bytes1(uint8(48 + value % 10));
            value /= 10;
        }
        bytes memory out = new bytes(20 - i);
        for (uint256 j = 0; j < out.length; j++) out[j] = digits[i + j];
        return string(out);
    }

    /// Takes an operator off the list (swap with the last, pop): the list holds only active operators, so the
    /// least-loaded scan costs what the registered operators cost, not every address that ever registered.
    function _unlist(address operator) private {
        uint256 position = info[operator].listedAt;
        if (position == 0) return;
        address last = operators[operators.length - 1];
        operators[position - 1] = last;
        info[last].listedAt = position;
        operators.pop();
        info[operator].listedAt = 0;
    }

    /// The active operator (other than `exclude`) whose price `payment` covers, with spare capacity and the lowest
    /// load; when all are full, the least loaded of them (the job waits in its queue). Ties go to the one assigned
    /// least recently. address(0) when there is none. A linear scan over at most MAX_OPERATORS.
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
